"""The PDF: a DocumentReference with the PDF inline (size, SHA-1 hash), its text as a reviewer
reads it (pdftotext), its first page rendered (pdftoppm), and its link to the document."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import RunningServer
from tests.evidence.conftest import OPERATION, PERIOD, outputs, sections_by_title

pytestmark = pytest.mark.skipif(
    shutil.which("pdftotext") is None or shutil.which("pdftoppm") is None,
    reason="poppler-utils (pdftotext, pdftoppm) are not installed: .ci/run installs them",
)


def read_pdf(pdf: bytes, folder: Path) -> tuple[str, bytes]:
    """The PDF's text (pdftotext) and its first page as PNG (pdftoppm)."""
    path = folder / "evidence.pdf"
    path.write_bytes(pdf)
    text = subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True
    ).stdout
    subprocess.run(
        ["pdftoppm", "-png", "-r", "50", "-f", "1", "-l", "1", str(path), str(folder / "page")],
        check=True,
    )
    return text, next(folder.glob("page*.png")).read_bytes()


async def test_the_pdf_says_what_the_document_says(demo: RunningServer, tmp_path: Path) -> None:
    found = outputs(await demo.client.get(f"/Patient/demo-alex/{OPERATION}", params=PERIOD))
    assert set(found) == {"document", "documentReference", "pdf"}
    reference = found["pdf"]
    attachment = reference["content"][0]["attachment"]
    pdf = base64.b64decode(attachment["data"])
    assert pdf.startswith(b"%PDF-") and attachment["contentType"] == "application/pdf"
    assert attachment["size"] == len(pdf)
    assert attachment["hash"] == base64.b64encode(hashlib.sha1(pdf).digest()).decode()
    assert reference["relatesTo"] == [{
        "code": "transforms",
        "target": {"reference": f"DocumentReference/{found['documentReference']['id']}"},
    }]  # fmt: skip
    assert reference["context"]["related"] == [{"reference": f"Bundle/{found['document']['id']}"}]
    assert reference["subject"] == {"reference": "Patient/demo-alex", "display": "Alex Rivera"}

    text, page = read_pdf(pdf, tmp_path)
    words = " ".join(text.split())
    document = found["document"]
    for heading in ("Medical necessity evidence", "Diagnoses (LOINC 11450-4)",
                    "Treatment plan (LOINC 18776-5)", "Goal attainment (GAS) (LOINC 61146-7)",
                    "Outcome measures (LOINC 11383-7)", "GAS T-score", "Outcome Rating Scale (ORS)",
                    "Session Rating Scale (SRS)", "PHQ-9", "Sessions attended (LOINC 46240-8)",
                    "Open alerts (LOINC 75310-3)", "Attestation", "Signature"):  # fmt: skip
        assert heading in words, heading
    assert "Client: Alex Rivera (Patient/demo-alex), born 1991-04-12" in words
    assert "F33.1 Major depressive disorder, recurrent, moderate" in words
    assert "Morgan Lee, LCSW (Practitioner/demo-therapist, NPI 1234567893)" in words
    assert document["identifier"]["value"] in words
    # the interpretation sentences of the document, word for word
    sections = sections_by_title(document)
    for title in ("Outcome Rating Scale (ORS)", "GAS T-score", "Sessions attended"):
        sentence = sections[title]["text"]["div"].split("<p>")[1].split("</p>")[0]
        assert " ".join(sentence.split()) in words, title
    assert page.startswith(b"\x89PNG") and len(page) > 10_000
    # the app's charts, drawn into the PDF: their threshold and band labels are PDF text
    for label in ("Expected 50", "Cutoff 25", "Reliable change", "Alliance 36"):
        assert label in words, label


async def test_format_pdf_gives_only_the_pdf(demo: RunningServer) -> None:
    found = outputs(
        await demo.client.get(
            f"/Patient/demo-casey/{OPERATION}", params={**PERIOD, "format": "pdf"}
        )
    )
    assert set(found) == {"pdf"}
    assert "relatesTo" not in found["pdf"]
