"""Record maps -> KubeArmor's protobuf Alert, Log and Message, as KubeArmor fills them.

Alert/Log: every scalar field of the same name; ``ExecEvent`` always present (KubeArmor always sets it);
``EventData`` = the record's (else parsed from Data/Resource, see :mod:`services.feeder.eventdata`) plus
Bulwark's own keys (EventID, Throttled, ThrottledAlerts, Dropped), which win. Message: KubeArmor's daemon
message (``Type: Message``, ``Level`` INFO/WARN/ERROR/DEBUG, HostName, HostIP, ClusterName, the text).
"""
from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message as PbMessage

from services.feeder.eventdata import event_data
from shared.proto_gen import kubearmor_pb2 as pb

__all__ = ["record_to_pb", "alert_to_pb", "log_to_pb", "message_to_pb", "LEVELS"]

_INT32 = (-(2**31), 2**31 - 1)
_BULWARK_KEYS = ("EventID", "Throttled", "ThrottledAlerts", "Dropped")
LEVELS = ("DEBUG", "INFO", "WARN", "ERROR")


def _scalars(cls: type[PbMessage]) -> dict[str, int]:
    return {f.name: f.cpp_type for f in cls.DESCRIPTOR.fields
            if f.message_type is None and not getattr(f, "is_repeated", False) and f.name != "ATags"}


_SCALARS = {pb.Alert: _scalars(pb.Alert), pb.Log: _scalars(pb.Log), pb.Message: _scalars(pb.Message)}


def _clamp(value: Any) -> int:
    return max(_INT32[0], min(_INT32[1], int(value)))


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _fill_event(out: Any, record: dict[str, Any]) -> None:
    """ExecEvent and EventData of an Alert or Log."""
    execd = record.get("ExecEvent")
    out.ExecEvent.SetInParent()
    if isinstance(execd, dict):
        out.ExecEvent.ExecID = str(execd.get("ExecID") or "")
        out.ExecEvent.ExecutableName = str(execd.get("ExecutableName") or "")
    stored = record.get("EventData")
    data = stored if isinstance(stored, dict) else event_data(record)
    for key, value in data.items():
        out.EventData[str(key)] = _text(value)
    for key in _BULWARK_KEYS:
        if record.get(key) not in (None, "", False):
            out.EventData[key] = _text(record[key])


def record_to_pb(record: dict[str, Any], cls: type[PbMessage]) -> Any:
    """The protobuf ``cls`` (Alert, Log or Message) for a record map; unknown keys ignored."""
    out = cls()
    for name, cpp_type in _SCALARS[cls].items():
        value = record.get(name)
        if value is None or value == "":
            continue
        if cpp_type == FieldDescriptor.CPPTYPE_INT32:
            setattr(out, name, _clamp(value))
        elif cpp_type == FieldDescriptor.CPPTYPE_INT64:
            setattr(out, name, int(value))
        else:
            setattr(out, name, str(value))
    if cls is pb.Alert:
        out.ATags.extend(str(t) for t in record.get("ATags", []))
    if cls is not pb.Message:
        _fill_event(out, record)
    return out


def alert_to_pb(alert: dict[str, Any]) -> pb.Alert:
    """The protobuf Alert for an alert map."""
    return record_to_pb(alert, pb.Alert)


def log_to_pb(record: dict[str, Any]) -> pb.Log:
    """The protobuf Log for a log map."""
    return record_to_pb(record, pb.Log)


def _level(value: Any) -> str:
    text = str(value or "WARN").upper()
    return {"WARNING": "WARN", "ERR": "ERROR"}.get(text, text) if text not in LEVELS else text


def _about(record: dict[str, Any]) -> str:
    """The notice's text, naming the container it is about (a Message has no field for it)."""
    text = str(record.get("Message") or "")
    pod = record.get("PodName") or record.get("ContainerName") or record.get("ContainerID")
    if pod:
        where = f"{record['NamespaceName']}/{pod}" if record.get("NamespaceName") else str(pod)
        return f"{text} (container {where})"
    return text


def message_to_pb(record: dict[str, Any], *, cluster: str, node: str, host_ip: str) -> pb.Message:
    """KubeArmor's Message for a notice record (a throttling or dropped-records SystemEvent)."""
    return pb.Message(Timestamp=int(record.get("Timestamp") or 0), UpdatedTime=str(record.get("UpdatedTime") or ""),
                      ClusterName=str(record.get("ClusterName") or cluster),
                      HostName=str(record.get("HostName") or node),
                      HostIP=host_ip, Type="Message", Level=_level(record.get("Level")),
                      Message=_about(record))
