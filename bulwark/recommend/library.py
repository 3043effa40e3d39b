"""The hardening library: generic rules that apply to a workload when its image holds what they guard.

Each rule names what it guards (programs looked up in the usual binary directories, files and
directories, exec names, network protocols, capabilities), when it applies (``always``, or when at
least one of the guarded programs, files or directories exists in the image) and its references:
MITRE ATT&CK technique ids, NIST SP 800-53 rev. 5 controls, CIS benchmark items and DISA STIG ids.
A ``~/`` path stands for every home directory of the image (``/root`` and ``/home/*``).

Write protection uses ``readOnly: true``: a Block or Audit rule with it fires only on writes, so the
workload can still read what it needs. The rules are ours; the references are facts about the
named catalogues (the ids and what they cover), checked when the rule was written.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HardeningRule", "LIBRARY", "BIN_DIRS", "SHELLS", "rule_by_id", "rules_for_tags"]

BIN_DIRS = ("/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")
SHELLS = ("sh", "bash", "ash", "dash", "zsh")


@dataclass(frozen=True, slots=True)
class HardeningRule:
    """One generic hardening rule and its references."""

    id: str
    title: str
    description: str
    severity: int
    categories: tuple[str, ...]
    mitre: tuple[str, ...] = ()
    nist: tuple[str, ...] = ()
    cis: tuple[str, ...] = ()
    stig: tuple[str, ...] = ()
    programs: tuple[str, ...] = ()        # Process: these names, wherever BIN_DIRS hold them
    exec_names: tuple[str, ...] = ()      # Process: execname (programs that may arrive later)
    exec_dirs: tuple[str, ...] = ()       # Process: no exec from these directories (recursive)
    read_paths: tuple[str, ...] = ()      # File: any access (read or write)
    write_paths: tuple[str, ...] = ()     # File: writes only (readOnly)
    write_dirs: tuple[str, ...] = ()      # File: writes below these directories (recursive, readOnly)
    read_dirs: tuple[str, ...] = ()       # File: any access below these directories (recursive)
    write_patterns: tuple[str, ...] = ()  # File: writes to paths matching these globs (readOnly)
    protocols: tuple[str, ...] = ()       # Network
    capabilities: tuple[str, ...] = ()    # Capabilities
    needs: tuple[str, ...] = ()           # programs whose presence alone makes the rule apply (a shell)
    always: bool = False                  # applies whatever the image holds
    opt_in: str = ""                      # chosen only when this tag (or the rule's id) is asked for

    @property
    def tags(self) -> list[str]:
        """The policy's tags: categories, then every reference id, prefixed by its catalogue."""
        refs = [f"MITRE-{m}" for m in self.mitre] + [f"NIST-{n}" for n in self.nist] + [f"STIG-{s}" for s in self.stig]
        return [*self.categories, *refs]

    def references(self) -> dict[str, list[str]]:
        """``{"mitre": [...], "nist": [...], "cis": [...], "stig": [...]}``."""
        return {"mitre": list(self.mitre), "nist": list(self.nist), "cis": list(self.cis), "stig": list(self.stig)}


LIBRARY: tuple[HardeningRule, ...] = (
    HardeningRule(
        id="package-manager-exec", severity=5, categories=("package-manager", "least-functionality"),
        title="No package manager runs in the workload",
        description="A running workload never needs to install software; a package manager run inside it "
                    "is how tools are brought in after a compromise, and it changes what was scanned and signed.",
        programs=("apt", "apt-get", "aptitude", "dpkg", "dpkg-deb", "yum", "dnf", "microdnf", "rpm", "zypper",
                  "apk", "pacman", "pip", "pip3", "npm", "yarn", "gem", "easy_install"),
        mitre=("T1105", "T1072"), nist=("CM-7", "CM-11", "SI-7"),
        cis=("CIS Docker Benchmark 4.3: ensure unnecessary packages are not installed in the container",),
        stig=("RHEL-09-214015", "RHEL-08-010370")),
    HardeningRule(
        id="system-binaries-write", severity=5, categories=("system-binaries", "integrity"),
        title="System binaries and libraries are not modified",
        description="Writing under the binary and library directories replaces trusted programs with "
                    "attacker-controlled ones.",
        write_dirs=("/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/", "/usr/local/bin/", "/usr/local/sbin/",
                    "/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/"),
        mitre=("T1554", "T1036.005"), nist=("SI-7", "CM-5"),
        cis=("CIS Docker Benchmark 5.12: mount the container's root filesystem read only",)),
    HardeningRule(
        id="system-config-write", severity=5, categories=("system-config", "integrity"),
        title="System configuration under /etc is not modified at run time",
        description="Configuration changes at run time (services, resolvers, loader settings, shell profiles) "
                    "are a common persistence and defence-evasion step.",
        write_dirs=("/etc/",), write_paths=("/etc/ld.so.preload",),
        mitre=("T1543", "T1546.004", "T1574.006"), nist=("CM-5", "CM-6", "SI-7"),
        cis=("CIS Docker Benchmark 5.12: mount the container's root filesystem read only",)),
    HardeningRule(
        id="account-files-access", severity=7, categories=("credentials", "accounts"),
        title="Password hashes are not read and account files are not changed",
        description="Reading /etc/shadow exposes password hashes; writing the account, group or sudo files "
                    "creates accounts or grants privileges.",
        read_paths=("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-"),
        write_paths=("/etc/passwd", "/etc/group", "/etc/sudoers"), write_dirs=("/etc/sudoers.d/", "/etc/pam.d/"),
        mitre=("T1003.008", "T1098", "T1548.003", "T1556.003"), nist=("AC-6", "IA-5", "AC-2"),
        cis=("CIS Distribution Independent Linux 6.1: permissions on /etc/passwd, /etc/shadow, /etc/group",)),
    HardeningRule(
        id="trusted-certificates-write", severity=6, categories=("certificates", "integrity"),
        title="The trusted certificate stores are not modified",
        description="Adding a root certificate lets an attacker intercept the workload's TLS connections and "
                    "pass off its own code or servers as trusted.",
        write_dirs=("/etc/ssl/", "/etc/pki/", "/etc/ca-certificates/", "/usr/share/ca-certificates/",
                    "/usr/local/share/ca-certificates/"),
        write_paths=("/etc/ca-certificates.conf",),
        mitre=("T1553.004",), nist=("SC-12", "SC-17", "SI-7")),
    HardeningRule(
        id="cron-jobs", severity=5, categories=("cron", "persistence"),
        title="No scheduled job is added or changed",
        description="Cron tables and the crontab program are a classic way to make a foothold persistent.",
        programs=("crontab", "at", "batch"),
        write_paths=("/etc/crontab", "/etc/anacrontab", "/etc/cron.allow", "/etc/cron.deny"),
        write_dirs=("/etc/cron.d/", "/etc/cron.hourly/", "/etc/cron.daily/", "/etc/cron.weekly/",
                    "/etc/cron.monthly/", "/var/spool/cron/", "/var/spool/anacron/"),
        mitre=("T1053.003",), nist=("CM-5", "AC-6", "AU-12"),
        cis=("CIS Distribution Independent Linux 5.1: cron configuration files owned by root, not writable by others",),
        stig=("RHEL-08-030400", "RHEL-09-654097")),
    HardeningRule(
        id="shell-history-access", needs=SHELLS, severity=4, categories=("shell-history", "credentials"),
        title="Shell histories are neither read nor cleared",
        description="Histories hold typed secrets (passwords on command lines, tokens); clearing them hides "
                    "what an intruder did.",
        read_paths=("~/.bash_history", "~/.ash_history", "~/.sh_history", "~/.zsh_history", "~/.python_history",
                    "~/.mysql_history", "~/.psql_history"),
        mitre=("T1552.003", "T1070.003"), nist=("AU-9", "IA-5")),
    HardeningRule(
        id="shell-profile-write", needs=SHELLS, severity=4, categories=("shell-config", "persistence"),
        title="Shell start-up files are not modified",
        description="A command added to a shell start-up file runs each time a shell starts.",
        write_paths=("~/.bashrc", "~/.profile", "~/.bash_profile", "~/.bash_login", "~/.zshrc",
                     "/etc/profile", "/etc/bash.bashrc", "/etc/environment"),
        write_dirs=("/etc/profile.d/",),
        mitre=("T1546.004",), nist=("CM-5", "SI-7")),
    HardeningRule(
        id="credential-files-access", needs=SHELLS, severity=7, categories=("credentials",),
        title="Private keys and stored credentials are not read",
        description="SSH keys, cloud and registry credentials found in a workload give access well beyond it.",
        read_dirs=("~/.ssh/", "~/.aws/", "~/.kube/", "~/.docker/", "~/.gnupg/", "~/.config/gcloud/", "~/.azure/"),
        read_paths=("~/.netrc", "~/.git-credentials", "~/.pgpass"),
        write_paths=("~/.ssh/authorized_keys",),
        mitre=("T1552.001", "T1552.004", "T1098.004"), nist=("IA-5", "AC-6", "SC-28")),
    HardeningRule(
        id="service-account-token", severity=7, categories=("credentials", "kubernetes"), always=True,
        title="The Kubernetes service-account token is not read",
        description="The mounted token talks to the API server as the pod's service account; most workloads "
                    "never use it, and a stolen one moves an attack from the pod into the cluster.",
        read_dirs=("/var/run/secrets/kubernetes.io/serviceaccount/", "/run/secrets/kubernetes.io/serviceaccount/"),
        mitre=("T1528", "T1552.007"), nist=("AC-6", "IA-5"),
        cis=("CIS Kubernetes Benchmark 5.1.6: service account tokens are only mounted where necessary",)),
    HardeningRule(
        id="raw-sockets", severity=6, categories=("network", "raw-socket", "model-sandbox"), always=True,
        title="No raw socket is opened",
        description="Raw sockets forge packets, sniff traffic and scan networks; ordinary services never need them.",
        protocols=("raw",), capabilities=("net_raw",),
        mitre=("T1040", "T1046", "T1557"), nist=("SC-7", "AC-6"),
        cis=("CIS Kubernetes Benchmark 5.2: minimize the admission of containers with the NET_RAW capability",
             "CIS Docker Benchmark 5.3: restrict Linux kernel capabilities within containers")),
    HardeningRule(
        id="remote-access-tools", severity=6, categories=("remote-access", "least-functionality", "model-sandbox"),
        title="No remote shell, tunnel or listener tool runs",
        description="SSH, telnet, rsh and netcat-like tools open interactive or reverse shells and tunnels.",
        programs=("ssh", "sshd", "dropbear", "telnet", "telnetd", "in.telnetd", "rsh", "rlogin", "rexec", "nc",
                  "ncat", "netcat", "nc.traditional", "nc.openbsd", "socat", "ngrok"),
        mitre=("T1021.004", "T1219", "T1572", "T1059.004"), nist=("AC-17", "CM-7"),
        stig=("RHEL-09-215040",)),
    HardeningRule(
        id="remote-file-copy", severity=5, categories=("remote-copy", "least-functionality", "model-sandbox"),
        title="No tool downloads or copies files from elsewhere",
        description="Downloaders and copy tools bring in second-stage payloads and carry data out.",
        programs=("curl", "wget", "scp", "sftp", "rsync", "ftp", "tftp", "lftp", "aria2c"),
        mitre=("T1105", "T1048"), nist=("CM-7", "SC-7"), stig=("RHEL-09-215060",)),
    HardeningRule(
        id="crypto-miners", severity=8, categories=("crypto-miner", "resource-hijacking", "model-sandbox"),
        always=True,
        title="No crypto-miner runs and nothing runs from scratch directories",
        description="Miners are dropped into writable scratch directories and run under their usual names; "
                    "a workload's own programs never live in /tmp or /dev/shm.",
        exec_names=("xmrig", "xmr-stak", "minerd", "cpuminer", "ccminer", "ethminer", "nbminer", "t-rex",
                    "lolminer", "phoenixminer", "nanominer"),
        exec_dirs=("/tmp/", "/var/tmp/", "/dev/shm/"),
        mitre=("T1496", "T1059.004"), nist=("SI-4", "CM-7"),
        cis=("CIS Distribution Independent Linux 1.1: noexec on /tmp and /dev/shm",)),
    HardeningRule(
        id="dev-write", severity=7, categories=("devices", "escape"), always=True,
        title="No raw disk or memory device under /dev is written",
        description="Writing a block device or /dev/mem bypasses every file permission and can reach the host.",
        write_paths=("/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg"),
        write_patterns=("/dev/sd*", "/dev/vd*", "/dev/xvd*", "/dev/nvme*", "/dev/loop*", "/dev/dm-*"),
        write_dirs=("/dev/mapper/", "/dev/disk/"),
        mitre=("T1006", "T1611"), nist=("AC-6", "AC-3")),
    HardeningRule(
        id="kernel-modules", severity=8, categories=("kernel", "escape"),
        title="No kernel module is loaded or removed",
        description="A kernel module runs with the kernel's rights: a container escape and a rootkit at once.",
        programs=("insmod", "rmmod", "modprobe", "kmod", "depmod"), capabilities=("sys_module",),
        mitre=("T1547.006", "T1014"), nist=("CM-7", "AC-6")),
    HardeningRule(
        id="container-admin-tools", severity=6, categories=("kubernetes", "container-admin"),
        title="No container or cluster administration tool runs",
        description="kubectl, container runtime clients and helm inside a workload reach the cluster or the "
                    "node's runtime.",
        programs=("kubectl", "docker", "crictl", "ctr", "nerdctl", "podman", "helm", "kubeadm"),
        mitre=("T1609", "T1610", "T1613"), nist=("AC-6", "CM-7")),
    HardeningRule(
        id="system-discovery", severity=3, categories=("discovery",),
        title="System and network discovery tools are reported",
        description="Who am I, what runs here and what is around: the first commands after a break-in.",
        programs=("id", "whoami", "uname", "hostname", "ps", "netstat", "ss", "ifconfig", "ip", "arp", "route",
                  "nmap", "lsof", "w", "who", "last"),
        mitre=("T1082", "T1033", "T1057", "T1016", "T1049"), nist=("SI-4",)),
    HardeningRule(
        id="file-permission-tools", severity=4, categories=("permissions", "defense-evasion"),
        title="No file ownership, mode or attribute tool runs",
        description="Changing modes, owners or immutable attributes at run time prepares privilege escalation "
                    "or hides files.",
        programs=("chmod", "chown", "chgrp", "chattr", "setfacl", "setcap"),
        mitre=("T1222.002", "T1548.001"), nist=("AC-3", "CM-5")),
    # The model sandbox (--tag model-sandbox): loading an untrusted model file (a pickle runs code when
    # it is loaded) needs no program besides the loader itself and no network; these two rules and the
    # ones above tagged model-sandbox refuse what a booby-trapped model does first.
    HardeningRule(
        id="interpreter-exec", needs=SHELLS, severity=7, categories=("model-sandbox", "execution"),
        opt_in="model-sandbox",
        title="No shell or script interpreter is started",
        description="Code hidden in a model file (pickle's __reduce__, a Keras Lambda layer) reaches the "
                    "system through os.system or subprocess: a shell or another interpreter. The loader "
                    "itself needs none.",
        programs=(*SHELLS, "ksh", "csh", "tcsh", "fish", "perl", "ruby", "node", "nodejs", "lua", "php", "tclsh"),
        mitre=("T1059", "T1059.004", "T1059.006"), nist=("CM-7", "SI-3"),
        cis=("CIS Docker Benchmark 4.3: ensure unnecessary packages are not installed in the container",)),
    HardeningRule(
        id="outbound-network", severity=7, categories=("model-sandbox", "network", "exfiltration"), always=True,
        opt_in="model-sandbox",
        title="No network socket is opened",
        description="A model loads from local files; a TCP, UDP or ICMP socket opened while loading one is a "
                    "download of a second stage, a reverse shell or data leaving.",
        protocols=("tcp", "udp", "icmp"),
        mitre=("T1041", "T1105", "T1071"), nist=("SC-7", "AC-4")),
    HardeningRule(
        id="mount-tools", severity=6, categories=("escape", "filesystem"),
        title="No filesystem is mounted or unmounted",
        description="Mounting the host's disks or proc from a container is a known escape path.",
        programs=("mount", "umount", "losetup", "nsenter", "unshare", "chroot"),
        mitre=("T1611",), nist=("AC-6", "SC-39")),
)


def rule_by_id(rule_id: str) -> HardeningRule:
    """The library rule ``rule_id``; KeyError when there is none."""
    for rule in LIBRARY:
        if rule.id == rule_id:
            return rule
    raise KeyError(rule_id)


def rules_for_tags(tags: list[str]) -> list[HardeningRule]:
    """The rules having any of ``tags`` (a rule id, a category or a reference id; case ignored); all when
    empty. An opt-in rule (the model sandbox's: no shell, no network at all) only by its id or opt-in tag:
    it would break an ordinary workload."""
    wanted = {t.strip().lower() for t in tags if t.strip()}

    def names(rule: HardeningRule) -> set[str]:
        if rule.opt_in:
            return {rule.id, rule.opt_in}
        return {rule.id, *rule.categories, *rule.mitre, *rule.nist, *rule.stig, *rule.tags}

    if not wanted:
        return [r for r in LIBRARY if not r.opt_in]
    return [r for r in LIBRARY if wanted & {n.lower() for n in names(r)}]
