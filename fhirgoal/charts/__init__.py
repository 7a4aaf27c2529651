"""Charts of a client's measures, drawn the same way wherever they are shown: the clinician app's
inline SVG (webapp/charts.py wraps it in HTML) and the medical-necessity PDF (evidence/pdf.py
converts the same SVG to a ReportLab drawing).

Ground floor: this package imports nothing else from fhirgoal (tests/test_layering.py), so both
the app (which reaches the server over HTTP only) and the evidence (which computes its figures
with clinical/) can use it.

- model.py: the chart model (points, series, bands, thresholds);
- measures.py: the charts of ORS, SRS, the GAS T-score and PHQ-9/GAD-7 from plain values;
- svg.py: the SVG drawing.
"""
