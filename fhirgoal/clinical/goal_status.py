"""Goal.achievementStatus follows the GAS ratings (rules: achievement.py).

After every write of a GAS rating Observation (PCO GAS score codes, `focus` -> Goal) the goal's
status is decided again from all its ratings. The server writes the status it decides, marked
with the `derived-achievement-status` extension (pointing at the latest rating), and records a
Provenance.

Who owns the status (STATUS_RULE, also stated in `$progress` and the README): a status that was
already there before the goal's first rating was recorded (an EHR creates PCO goals with
`in-progress`) is a starting value, and the server replaces it from the ratings. A status a user
set after the first rating, without the server's mark, is a clinician's judgement: it is never
replaced; instead a `goal-status-review` Flag tells the clinician what the ratings suggest, and
closes once the clinician's status and the ratings agree again. Goals without GAS levels are not
rated against a scale: no status is derived for them and no Flag raised. The hook is convergent
(fhir/hooks.py): it reads the goal's ratings as they are now, so re-running it after a crash is
harmless, and the ratings of one transaction decide each goal's status once, at its end.
"""

from __future__ import annotations

from typing import Any

from fhirgoal.clinical.achievement import AchievementDecision, StatusChange, decide, status_change
from fhirgoal.clinical.codes import DERIVED_STATUS_EXTENSION
from fhirgoal.clinical.flags import (
    AlertFlag,
    clear_flag,
    flag_id,
    raise_flag,
    record_provenance,
)
from fhirgoal.clinical.records import (
    first_rating_recorded,
    is_gas_goal,
    rating_of,
    ratings_by_goal,
)
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.core.errors import FhirError
from fhirgoal.fhir.hooks import WriteEvent
from fhirgoal.fhir.instants import instant_text, now
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.repository import Version

KEPT_META = ("profile", "security", "tag")  # what a derived-status update keeps of the goal's meta


def _rated_goal(resource: dict[str, Any] | None) -> str | None:
    if resource is None or resource.get("resourceType") != "Observation":
        return None
    if resource.get("status") == "entered-in-error":
        # still names its goal: retracting a rating changes the goal's status too
        resource = {**resource, "status": "final"}
    rated = rating_of(resource)
    return rated[0] if rated else None


class GoalStatusHook:
    # Observation: a rating changed. Goal: someone set the status (a clinician's status that now
    # agrees with the ratings closes the review flag; one that disagrees opens it).
    resource_types = frozenset({"Observation", "Goal"})

    def __init__(self, service: FhirService) -> None:
        self.service = service

    def _goals(self, event: WriteEvent) -> set[str]:
        previous = event.previous.resource if event.previous is not None else None
        if event.resource_type == "Goal":
            before = (previous or {}).get("achievementStatus")
            after = (event.resource or {}).get("achievementStatus")
            return {event.id} if event.resource is not None and before != after else set()
        return {g for g in (_rated_goal(event.resource), _rated_goal(previous)) if g}

    def interested(self, event: WriteEvent) -> bool:
        return bool(self._goals(event))

    async def before_write(self, event: WriteEvent) -> None:
        """A rating may only rate a goal of its own subject: the status, Provenance and Flags it
        drives are written by the server, so a rating must not reach another client's goal.
        An unknown goal and another client's goal get the same answer (nothing is revealed)."""
        if event.resource_type != "Observation" or event.resource is None:
            return
        gid = _rated_goal(event.resource)
        if gid is None:
            return
        subject = (event.resource.get("subject") or {}).get("reference")
        goal = await self.service.current(UNRESTRICTED, "Goal", gid)
        owner = (goal.resource or {}).get("subject", {}).get("reference") if goal else None
        if goal is None or goal.deleted or owner != subject:
            raise FhirError(
                "processing",
                f"a GAS rating must focus on a Goal of its subject ({subject}); Goal/{gid} is not one",
                "Observation.focus",
            )

    async def after_write(self, event: WriteEvent) -> None:
        for goal in sorted(self._goals(event)):
            await self.refresh(goal)

    async def after_writes(self, events: list[WriteEvent]) -> None:
        """The writes of a unit of work (fhir/hooks.py): each goal they concern decided once,
        from all its ratings as the unit leaves them (a transaction of 20 ratings on 5 goals
        writes 5 statuses, not 20)."""
        goals: set[str] = set()
        for event in events:
            goals |= self._goals(event)
        for goal in sorted(goals):
            await self.refresh(goal)

    async def refresh(self, gid: str) -> None:
        svc = self.service
        for _ in range(svc.settings.write_retries):
            current = await svc.current(UNRESTRICTED, "Goal", gid)
            if current is None or current.resource is None:
                return  # rated goal unknown or deleted: nothing to keep in step
            goal = current.resource
            if not is_gas_goal(goal):
                # A rating of a goal without GAS levels (a PCO goal with only the GAS measure,
                # or none) has no scale behind it: the server decides nothing and raises nothing.
                await clear_flag(svc, flag_id("goal-status-review", gid), instant_text(now()),
                                 "the goal is not scaled for GAS")  # fmt: skip
                return
            subject = (goal.get("subject") or {}).get("reference")
            ratings = (await ratings_by_goal(svc, UNRESTRICTED, [gid], subject)).get(gid, [])
            decision = decide(ratings)
            status = goal.get("achievementStatus")
            marked = _server_marked(status) or await self._starting_value(current, gid, subject)
            change = status_change(status, marked, decision)
            if change is StatusChange.KEEP_CLINICIAN:
                assert decision is not None
                await self._ask_for_review(goal, decision, status)
                return
            await clear_flag(svc, flag_id("goal-status-review", gid), instant_text(now()),
                             "the goal's status and its ratings agree")  # fmt: skip
            if change is StatusChange.UNCHANGED and not (decision is None and marked):
                return
            updated = dict(goal)
            # the server stamps versionId and lastUpdated; what the goal claims (its GAS profile)
            # and its labels (security: who may see it) stay as they are
            kept = {k: v for k, v in (goal.get("meta") or {}).items() if k in KEPT_META}
            if kept:
                updated["meta"] = kept
            else:
                updated.pop("meta", None)
            if decision is None:  # the ratings behind the server's status are gone
                updated.pop("achievementStatus", None)
                reason, sources = "no GAS rating left for this goal", []
            else:
                updated["achievementStatus"] = {
                    "extension": [
                        {
                            "url": DERIVED_STATUS_EXTENSION,
                            "extension": [
                                {"url": "code", "valueCode": decision.code},
                                {
                                    "url": "rating",
                                    "valueReference": {
                                        "reference": f"Observation/{decision.based_on[-1]}"
                                    },
                                },
                            ],
                        }
                    ],
                    "coding": [decision.coding()],
                    "text": decision.display,
                }
                reason = decision.reason
                sources = [f"Observation/{oid}" for oid in decision.based_on]
            try:
                outcome = await svc.update(
                    UNRESTRICTED, "Goal", gid, updated, f'W/"{current.version}"'
                )
            except FhirError as error:
                if error.category == "precondition-failed":
                    continue  # a clinician saved the goal meanwhile: decide again
                raise
            assert outcome.version is not None
            await record_provenance(svc, outcome.version, reason, sources)
            return

    async def _starting_value(self, current: Version, gid: str, subject: Any) -> bool:
        """Whether the goal's status was set before its first rating was recorded (so it is a
        starting value, not a clinician's judgement of the ratings)."""
        return await status_set_before_ratings(self.service, current, gid, subject)

    async def _ask_for_review(
        self, goal: dict[str, Any], decision: AchievementDecision, status: Any
    ) -> None:
        subject = str((goal.get("subject") or {}).get("reference", ""))
        if not subject.startswith("Patient/"):
            return  # a Group's goal: no single client to flag
        patient = subject.removeprefix("Patient/")
        current = _status_text(status)
        text = (
            f"Goal '{(goal.get('description') or {}).get('text', goal['id'])}': the ratings suggest "
            f"'{decision.display}' ({decision.reason}); the status a clinician set is '{current}'."
        )
        await raise_flag(
            self.service,
            AlertFlag(
                id=flag_id("goal-status-review", goal["id"]),
                patient=patient,
                kind="goal-status-review",
                display="Goal status review",
                text=text,
                details=(f"Goal/{goal['id']}", *(f"Observation/{o}" for o in decision.based_on)),
                since=instant_text(now()),
            ),
        )


STATUS_RULE = (
    "Goal.achievementStatus follows the GAS ratings: the server derives it (and marks it as its "
    "own) from the ratings. A status already present before the goal's first rating (such as the "
    "in-progress an EHR sends at creation) is a starting value that the ratings replace; a status "
    "a user sets after the first rating is the clinician's and is kept, with a goal-status-review "
    "Flag while the ratings suggest otherwise."
)


async def status_set_before_ratings(
    svc: FhirService, current: Version, gid: str, subject: Any
) -> bool:
    """Whether the current achievementStatus of Goal `gid` (version `current`) was written before
    the first of its GAS ratings was recorded: walk the goal's history back to the version that
    set this status, and compare its time with the earliest rating's."""
    status = (current.resource or {}).get("achievementStatus")
    if not status:
        return False
    set_at = current.last_updated
    versions, _, _ = await svc.history(UNRESTRICTED, "Goal", gid, {"_count": "500"})
    for version in versions:  # newest first
        if version.version > current.version:
            continue
        if version.resource is None or version.resource.get("achievementStatus") != status:
            break
        set_at = version.last_updated
    first = await first_rating_recorded(svc, gid, subject)
    return first is not None and set_at < first


def _server_marked(status: Any) -> bool:
    """Whether the server set this status: its mark records the code it wrote, so a client that
    edits the coding but sends the mark back (read-modify-write) is still seen as the author."""
    if not isinstance(status, dict):
        return False
    codes = {c.get("code") for c in status.get("coding") or [] if isinstance(c, dict)}
    for extension in status.get("extension") or []:
        if extension.get("url") == DERIVED_STATUS_EXTENSION:
            marked = {e.get("valueCode") for e in extension.get("extension") or []
                      if e.get("url") == "code"}  # fmt: skip
            return bool(marked) and codes == marked
    return False


def _status_text(status: Any) -> str:
    if not isinstance(status, dict):
        return "none"
    codes = [c.get("display") or c.get("code") for c in status.get("coding") or []]
    return str(status.get("text") or ", ".join(str(c) for c in codes if c) or "none")
