"""EventData as KubeArmor fills it: Data's key=value pairs, plus Resource's for Network records."""
from __future__ import annotations

from services.feeder.eventdata import event_data, parse_pairs


def test_pairs_are_split_on_whitespace_and_the_first_equals_with_capitalised_keys() -> None:
    assert parse_pairs("syscall=SYS_OPENAT  fd=-100 flags=O_RDONLY") == \
        {"Syscall": "SYS_OPENAT", "Fd": "-100", "Flags": "O_RDONLY"}
    assert parse_pairs("path=/a=b flags= bare") == {"Path": "/a=b", "Flags": ""}
    assert parse_pairs("") == {}


def test_network_resource_is_merged_in_and_wins() -> None:
    record = {"Operation": "Network", "Data": "syscall=SYS_CONNECT fd=3 protocol=x",
              "Resource": "remoteip=10.0.0.7 port=443 protocol=TCP"}
    assert event_data(record) == {"Syscall": "SYS_CONNECT", "Fd": "3", "Protocol": "TCP", "Remoteip": "10.0.0.7",
                                  "Port": "443"}


def test_other_operations_ignore_the_resource() -> None:
    assert event_data({"Operation": "File", "Data": "syscall=SYS_OPENAT", "Resource": "a=b"}) == \
        {"Syscall": "SYS_OPENAT"}
