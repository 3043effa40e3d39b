"""The gRPC listeners: KubeArmor's log service (karmor logs) and policy service."""
