"""Da Vinci CDex (STU2, https://hl7.org/fhir/us/davinci-cdex/) Task-based requests: a payer asks
for attachments or data about one of its members, the clinician approves or refuses, the server
fulfils (task-based-approach.html).

- codes.py: the code systems and codes of the Task profiles;
- request.py: a Task read as a request, its essentials checked, its patient and payer resolved;
- rule.py: the write rule on Task (what a payer may create, what anyone but the server's
  fulfilment may change);
- fulfil.py: `Task/{id}/$approve` and `Task/{id}/$reject`, the clinician's answers.
"""
