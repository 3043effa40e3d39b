"""``bulwark recommend``: hardening policies for a workload, picked by the files its image really contains.

:mod:`.library` holds the hardening rules (our own, each with its CIS, MITRE ATT&CK, NIST 800-53 and
STIG references), :mod:`.files` lists an image's files (Docker export) or a directory's, :mod:`.build`
turns the rules that apply into KubeArmorPolicy documents, :mod:`.report` writes the text, JSON and
HTML reports and :mod:`.cmd` is the command line.
"""
