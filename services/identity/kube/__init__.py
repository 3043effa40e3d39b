"""Kubernetes: the node's pods, namespaces and policy resources, watched; node agents' token logins."""
