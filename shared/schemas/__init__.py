"""Message schemas shared by the services: raw events, workloads, compiled rules, alerts."""
from shared.schemas.events import RawEvent, RawBatch
from shared.schemas.identity import Workload, IdentityEvent
from shared.schemas.rules import Rule, WorkloadRules, RuleSet
from shared.schemas.alert import ALERT_FIELDS

__all__ = ["RawEvent", "RawBatch", "Workload", "IdentityEvent", "Rule", "WorkloadRules", "RuleSet", "ALERT_FIELDS"]
