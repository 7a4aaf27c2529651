"""JSON Patch (RFC 6902) applied to a resource within bounds: https://hl7.org/fhir/R4/http.html#patch

A patch body is small, but what it builds need not be: each `copy` may copy the whole document
into itself, so 22 operations in a 1.3 KB body built a 495 MB Patient in 31 s of CPU, and each
`add`, `copy` or `move` may nest its value under the last one, past any depth the JSON parser
allows. Operations are therefore applied one at a time, each refused with a 400/413 before it runs
if the value it places would nest too deep, or if what `copy` has added in all exceeds the body
limit.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer

from fhirgoal.core.errors import FhirError
from fhirgoal.core.jsonio import check_nesting, dumps


def apply_patch(
    document: dict[str, Any],
    operations: list[dict[str, Any]],
    max_operations: int,
    max_depth: int,
    max_bytes: int,
) -> Any:
    """`document` patched by `operations` (a new object); FhirError on a refused or failed patch."""
    if len(operations) > max_operations:
        raise FhirError("bad-request", f"a JSON Patch may have at most {max_operations} operations")
    patched: Any = copy.deepcopy(document)
    copied = 0
    try:
        for i, operation in enumerate(operations):
            op, path = operation.get("op"), operation.get("path")
            value: Any = None
            if op in ("copy", "move") and isinstance(operation.get("from"), str):
                value = jsonpointer.resolve_pointer(patched, operation["from"])
            elif op in ("add", "replace"):
                value = operation.get("value")
            if isinstance(value, dict | list) and isinstance(path, str):
                # the document is level 1; a value's top sits one below its path's last segment
                check_nesting(value, max_depth, path.count("/") + 1)
            if op == "copy" and value is not None:
                copied += len(dumps(value))
                if copied > max_bytes:
                    raise FhirError(
                        "too-large", f"the patch copies more than {max_bytes} bytes", f"[{i}]"
                    )
            patched = jsonpatch.JsonPatch([operation]).apply(patched, in_place=True)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise FhirError("processing", f"the patch cannot be applied: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise FhirError("bad-request", f"malformed JSON Patch operation: {exc}") from None
    return patched
