"""Submissions to payers: Da Vinci CDex `$submit-attachment`
(https://hl7.org/fhir/us/davinci-cdex/OperationDefinition-submit-attachment.html), solicited (a
CDex request approved with `sendToPayer`) and unsolicited (`Patient/{id}/$submit-to-payer`,
`fhirgoal payer submit`), delivered from the durable outbox.

- connections.py: payer connections (Backend Services, as EHR connections are);
- submission.py: the operation's Parameters, built from a Task or a Communication, and checked;
- outbox.py: the outbox source and the delivery handler (token, retries, audit);
- unsolicited.py: the unsolicited path, shared by the operation and the CLI.
"""
