"""Message schemas shared by the services: raw events, workloads, compiled rules, alerts."""
from shared.schemas.alert import ALERT_FIELDS
from shared.schemas.events import RawBatch, RawEvent
from shared.schemas.identity import IdentityEvent, Workload
from shared.schemas.rules import Rule, RuleSet, WorkloadRules

__all__ = ["RawEvent", "RawBatch", "Workload", "IdentityEvent", "Rule", "WorkloadRules", "RuleSet", "ALERT_FIELDS"]
