"""KubeArmor's Ginkgo specs (``tests/k8s_env/<suite>/*_test.go``), one entry per ``It``, as steps.

Each entry keeps the spec's order of calls, its commands, policies and expectations; what differs is
said in ``notes`` (and in :mod:`tests.kubearmor_suite.steps`). KubeArmor skips some specs by the
node's enforcer label: Bulwark's enforcer here is fanotify (plus eBPF signals), neither ``apparmor``
nor ``bpf``, so ``if Contains(enforcer, "apparmor"/"bpf") { Skip }`` runs and ``if !Contains(enforcer,
"bpf") { Skip }`` does not (those need KubeArmor's BPF-LSM enforcer, and BPF-LSM cannot load on this
kernel).

``na`` says why a spec cannot apply here; such specs are listed in the summary table, not run.
``xfail`` names a known, documented product gap the spec runs into.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.kubearmor_suite.cluster import Container, Pod
from tests.kubearmor_suite.steps import (
    DENIED,
    Alert,
    Apply,
    Deploy,
    Has,
    Log,
    LogOps,
    NoAlert,
    Not,
    Note,
    Re,
    Run,
    Step,
    Watch,
)

__all__ = ["Spec", "SPECS", "POD_GITHUB"]

ANY = Re(".*")
K8S_API = "needs a Kubernetes API server"
BPF_ONLY = ("KubeArmor runs it only with its BPF-LSM enforcer (Skip unless the node's enforcer is bpf); "
            "BPF-LSM programs cannot load on this kernel (BPF_PROG_LOAD of an LSM program: EPERM)")
BPF_ONLY_PTS = BPF_ONLY + ("; Bulwark has no `pts` rules either (the field passes `bulwark policy validate` and is "
                           "then ignored)")
BPF_ONLY_DNS = BPF_ONLY + ("; Bulwark has no `matchDNSQueries` rules either (the section passes `bulwark policy "
                           "validate` and is then ignored)")
APPARMOR = "needs AppArmor (a native AppArmor rule); this kernel has no AppArmor"
KILLED = ("known gap (README 'Enforcers'): without BPF-LSM, Bulwark refuses only IPv4/IPv6 sockets (its cgroup "
          "sock_create program); a packet socket (arping) or a capability use kills the process at socket()/the "
          "capability check (Result 'Killed (SIGKILL)'), where KubeArmor's LSM refuses the call (the program "
          "reports 'Permission denied')")
KILLED_UNIX = ("known gap (README 'Enforcers'): without BPF-LSM, protocol 'all' refuses IPv4/IPv6 sockets, but the "
               "shell's own Unix socket (its name-service lookup, before ping runs) kills it: the cgroup hook "
               "that refuses sockets sees only INET families")


# -- pods (the deployments of each suite, one replica each) -------------------------------------------------
def _ubuntu(ns: str, n: int, group: str | None, **extra: Any) -> Pod:
    labels = ((("group", group),) if group else ()) + (("container", f"ubuntu-{n}"),)
    return Pod(ns, f"ubuntu-{n}-deployment", labels, (Container(f"ubuntu-{n}-container"),), **extra)


_HTML = (("/var/www/html/kubearmor-suite.html",
          "<html>\n<body>kubearmor-suite stands in for a remote page</body>\n</html>\n"),)
UB1 = _ubuntu("multiubuntu", 1, "group-1", arp_peer=True, files=_HTML)
UB2 = _ubuntu("multiubuntu", 2, "group-1")
UB3 = _ubuntu("multiubuntu", 3, "group-1", host_var_log=True)
UB4 = _ubuntu("multiubuntu", 4, "group-2")
UB5 = _ubuntu("multiubuntu", 5, "group-2")
MULTIUBUNTU = (UB1, UB2, UB3, UB4, UB5)
POD_GITHUB = _ubuntu("github", 1, None, arp_peer=True)

_SLEEP = ("sleep", "infinity")
_NGINX = (Container("nginx", "debian", command=_SLEEP),)
NGINX1 = Pod("nginx1", "nginx1", (("app", "nginx"), ("deployment", "nginx-1")), _NGINX)
NGINX2 = Pod("nginx2", "nginx2", (("app", "nginx"), ("deployment", "nginx-2")), _NGINX)
NGINX_LATER = Pod("nginx-later", "nginx-later-deploy", (("app", "nginx"), ("deployment", "nginx-later")), _NGINX)
DEBIAN_APP = Pod("nginx1", "debian-app", (("app", "debian-app"),),
                 (Container("debian-container", "debian", command=_SLEEP),))

_NGINX_INDEX = """<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>kubearmor-suite: the nginx:alpine stand-in's index page.</p>
</body>
</html>
"""
NGINX_POSTURE = Pod("nginx-posture", "nginx-posture-deployment", (("app", "nginx-posture"),),
                    (Container("nginx", "ubuntu", command=_SLEEP),),
                    files=(("/docker-entrypoint.sh",
                            "#!/bin/sh\n# nginx:alpine's entrypoint (stand-in)\nexec \"$@\"\n"),
                           ("/usr/share/nginx/html/index.html", _NGINX_INDEX)))
WORDPRESS = Pod("wordpress-mysql", "wordpress", (("app", "wordpress"),), (Container("wordpress", "ubuntu"),),
                workdir="/var/www/html",
                files=(("/var/www/html/wp-config.php", "<?php\ndefine('DB_NAME', 'wordpress');\n"
                        "define('DB_PASSWORD', 'root-password');\n"),
                       ("/var/www/html/readme.html", "<html><body>WordPress</body></html>\n")))
MYSQL = Pod("wordpress-mysql", "mysql", (("app", "mysql"),), (Container("mysql", "ubuntu"),), dirs=("/var/lib/mysql",))
MULTICONTAINER = Pod("multicontainer", "multicontainer-deployment", (("container", "multicontainer"),),
                     (Container("container-1"), Container("container-2")))
PRIVILEGED = Pod("privileged", "privileged-deployment", (("deployment", "privileged"),),
                 (Container("priv-container", privileged=True), Container("unpriv-container")))
CAPS = Pod("privileged", "caps-deployment", (("deployment", "caps"),), (Container("caps-container", cap_add=("ALL",)),))
SYSCALLS = _ubuntu("syscalls", 1, None)

IMAGE_NOTES = {
    "csp": "nginx and debian:latest pods run the merged-/usr Debian bookworm rootfs (their cat is /usr/bin/cat, "
           "as the cluster policies name it), command `sleep infinity` (the specs only exec into them)",
    "smoke": "wordpress:4.8-apache and mysql:8.0 stand-ins: KubeArmor's image (split /usr, like the stretch-based "
             "wordpress image) with /var/www/html/wp-config.php (the working directory) and /var/lib/mysql",
    "blockposture": "nginx:alpine stand-in: KubeArmor's image with /docker-entrypoint.sh and "
                    "/usr/share/nginx/html/index.html, command `sleep infinity`",
}


@dataclass(frozen=True)
class Spec:
    suite: str
    title: str
    steps: tuple[Step, ...] = ()
    pods: tuple[Pod, ...] = ()
    ref: str = ""
    na: str = ""
    xfail: str = ""
    notes: tuple[str, ...] = ()
    occurrence: int = 1  # the n-th It with this title in its file

    @property
    def id(self) -> str:
        return f"{self.suite}: {self.title}" + (f" #{self.occurrence}" if self.occurrence > 1 else "")


def _spec(suite: str, pods: tuple[Pod, ...], title: str, *steps: Step, ref: str = "", na: str = "", xfail: str = "",
          notes: tuple[str, ...] = (), occurrence: int = 1) -> Spec:
    return Spec(suite, title, tuple(steps), pods, ref, na, xfail, notes, occurrence)


# keys of the pods the steps name
U1, U3, U4 = UB1.key, UB3.key, UB4.key
N1, N2, NL, DEB = NGINX1.key, NGINX2.key, NGINX_LATER.key, DEBIAN_APP.key
WP, SQL, MC, PRIV, CAP, SYS, NGP = (WORDPRESS.key, MYSQL.key, MULTICONTAINER.key, PRIVILEGED.key, CAPS.key,
                                    SYSCALLS.key, NGINX_POSTURE.key)
MU = "multiubuntu"


def _deny(policy: str, severity: str = "", **more: str) -> Alert:
    return Alert({"PolicyName": policy, "Severity": severity, "Action": "Block", "Result": DENIED, **more})


def _audit(policy: str, severity: str = "", **more: str) -> Alert:
    return Alert({"PolicyName": policy, "Severity": severity, "Action": "Audit", "Result": "Passed", **more})


def _posture(**more: str) -> Alert:
    return Alert({"PolicyName": "DefaultPosture", "Action": "Block", "Result": DENIED, **more})


# -- ksp ------------------------------------------------------------------------------------------------
def _ksp(title: str, *steps: Step, **kw: Any) -> Spec:
    return _spec("ksp", MULTIUBUNTU, title, *steps, **kw)


def _w(filter_: str, op: str, pod: str, ns: str = MU) -> Watch:
    return Watch(filter_, ns, op, pod)


SECRET = "cat /home/user1/secret_data1.txt"
SECRET_DENIED = Re(r"secret_data1\.txt.*Permission denied")
AS_USER1_CAT = "su - user1 -c 'cat secret_data1.txt'"
AS_USER1_CAT_ABS = "su - user1 -c 'cat /home/user1/secret_data1.txt'"

KSP = [
    _ksp("can annotate pre existing pod", na=K8S_API + ": reads, through the Kubernetes API, the annotations "
         "KubeArmor's controller wrote on pods that existed before it (ksp/pre-run-pod.yaml)"),
    _ksp("it can block all network traffic on net-raw protocol",
         Apply("multiubuntu/ksp-ubuntu-1-block-net-raw-cap.yaml"), _w("policy", "Capabilities", U1),
         Run(U1, "arping -c 1 127.0.0.1", Re("CAP_NET_RAW.*required"), eventual=True),
         Alert({"PolicyName": "ksp-ubuntu-1-block-net-raw-cap", "Severity": "1", "Action": "Block"}), xfail=KILLED),
    _ksp("it can block all network traffic on net-raw protocol from specific source",
         Apply("multiubuntu/ksp-ubuntu-1-block-net-raw-cap-from-source.yaml"), _w("policy", "Capabilities", U1),
         Run(U1, "arping -c 1 127.0.0.1", Re("CAP_NET_RAW.*required"), eventual=True),
         Alert({"PolicyName": "ksp-ubuntu-1-block-net-raw-cap-from-source", "Severity": "1", "Action": "Block"}),
         xfail=KILLED),
    _ksp("it can block a process from path for all pods in a group",
         Apply("multiubuntu/ksp-group-1-block-proc-path.yaml"), _w("policy", "Process", U1),
         Run(U1, "sleep 1", Re("sleep.*Permission denied"), eventual=True), _deny("ksp-group-1-block-proc-path", "5"),
         _w("policy", "Process", U3),
         Run(U3, "sleep 1", Re("sleep.*Permission denied"), eventual=True), _deny("ksp-group-1-block-proc-path", "5"),
         ref="multiubuntu_test_01"),
    _ksp("it can audit a process from path for all pods in a group",
         Apply("multiubuntu/ksp-group-2-audit-proc-path.yaml"), _w("policy", "Process", U4),
         Run(U4, "sleep 1", ANY, eventual=True), _audit("ksp-group-2-audit-proc-path", "4"), ref="multiubuntu_test_02"),
    _ksp("it can block all the processes, direct child of a directory",
         Apply("multiubuntu/ksp-ubuntu-1-block-proc-dir.yaml"), _w("policy", "Process", U1),
         Run(U1, "route", Re("route.*Permission denied"), eventual=True), _deny("ksp-ubuntu-1-block-proc-dir", "6"),
         ref="multiubuntu_test_04"),
    _ksp("it can block all the processes in a directory recursively",
         Apply("multiubuntu/ksp-ubuntu-1-block-proc-dir-recursive.yaml"), _w("policy", "Process", U1),
         Run(U1, "whoami", Re("whoami.*Permission denied"), eventual=True),
         _deny("ksp-ubuntu-1-block-proc-dir-recursive", "2"), ref="multiubuntu_test_05"),
    _ksp("it can block a process execution from source path for all the pods in a group",
         Apply("multiubuntu/ksp-group-1-block-proc-path-from-source.yaml"), _w("policy", "Process", U1),
         Run(U1, "/bin/dash -c ls", Re("dash.*ls.*Permission denied"), eventual=True),
         _deny("ksp-group-1-block-proc-path-from-source", "5"),
         _w("system", "Process", U1), Run(U1, "/bin/dash -c pwd", Re("/")),
         Log({"Resource": "/bin/dash", "Result": "Passed"}), ref="multiubuntu_test_12, github_test_01"),
    _ksp("it can allow the accesses to the process and files from a particular directory only",
         Apply("multiubuntu/ksp-ubuntu-3-allow-proc-dir.yaml"), _w("policy", "File", U3),
         Run(U3, "cat /etc/hostname", Re("hostname.*Permission denied"), eventual=True), _posture(Resource="hostname"),
         Run(U3, "cat /credentials/password", Has("password file")), ref="multiubuntu_test_08"),
    _ksp("it can allow the accesses to a process path by the owner only",
         Apply("multiubuntu/ksp-ubuntu-3-allow-proc-path-owner.yaml"), _w("policy", "Process", U3),
         Run(U3, "/home/user1/hello", Re("hello.*Permission denied"), eventual=True), _posture(),
         Run(U3, "su - user1 -c '/home/user1/hello'", Has("helloworld")), ref="multiubuntu_test_14"),
    _ksp("it can block all the accesses to a process path except access by the owner",
         Apply("multiubuntu/ksp-ubuntu-3-block-proc-path-owner.yaml"), _w("policy", "Process", U3),
         Run(U3, "/home/user1/hello", Re("hello.*Permission denied"), eventual=True),
         Run(U3, "/home/user1/hello", Re("hello.*Permission denied"), eventual=True),
         _deny("ksp-ubuntu-3-block-proc-path-owner", "7"),
         _w("system", "Process", U3), Run(U3, "su - user1 -c '/home/user1/hello'", Has("helloworld")),
         Log({"Resource": "/home/user1/hello", "Result": "Passed"}), ref="multiubuntu_test_15"),
    _ksp("it can block process execution with just binary name",
         Apply("multiubuntu/ksp-ubuntu-1-block-proc-execname.yaml"), _w("policy", "Process", U1),
         Run(U1, "apt", Re("apt.*Permission denied"), eventual=True), _deny("ksp-ubuntu-1-block-proc-execname")),
    _ksp("it can block process execution with matchExpression, In & NotIn operator",
         Apply("multiubuntu/ksp-match-expression-in-notin-block-process.yaml"), _w("policy", "Process", U1),
         Run(U1, "apt", Re("apt.*Permission denied"), eventual=True),
         _deny("ksp-match-expression-in-notin-block-process"),
         _w("system", "Process", U3), Run(U3, "apt", ANY, eventual=True),
         Log({"Resource": "/usr/bin/apt", "Result": "Passed"})),
    _ksp("it can block process execution with matchExpression, NotIn operator",
         Apply("multiubuntu/ksp-match-expression-notin-block-process.yaml"), _w("system", "Process", U1),
         Run(U1, "apt", ANY, eventual=True), Log({"Resource": "/usr/bin/apt", "Result": "Passed"}),
         _w("policy", "Process", U3), Run(U3, "apt", Re("apt.*Permission denied"), eventual=True),
         _deny("ksp-match-expression-notin-block-process")),
    _ksp("it can allow certain arguments in process execution",
         Apply("multiubuntu/ksp-ubuntu-1-allow-proc-args.yaml"), _w("policy", "Process", U1),
         Run(U1, "python3 -m pydoc", Re(".*Permission denied"), eventual=True),
         _deny("ksp-ubuntu-1-allow-proc-args"),
         notes=("the policy names /usr/bin/python3.6 (Ubuntu 18.04's); the image's python3 resolves to "
                "/usr/bin/python3.6 as there (a copy of Debian's python3.11)",)),
    _ksp("it can block and allow process execution based on pts", na=BPF_ONLY_PTS),
    _ksp("it can block and allow file read based on pts", na=BPF_ONLY_PTS),
    _ksp("it can allow accessing a file from source path",
         Apply("multiubuntu/ksp-group-2-allow-file-path-from-source-path.yaml"), _w("policy", "File", U4),
         Run(U4, "cat /etc/hostname", Re("hostname.*Permission denied"), eventual=True), _posture(Resource="hostname"),
         Run(U4, "cat /secret.txt", Has("secret file")), ref="multiubuntu_test_17, github_test_05"),
    _ksp("it can block accessing a file directory recursively",
         Apply("multiubuntu/ksp-ubuntu-4-block-file-dir-recursive.yaml"), _w("policy", "File", U4),
         Run(U4, "cat /credentials/password", Re("password.*Permission denied"), eventual=True),
         _deny("ksp-ubuntu-4-block-file-dir-recursive", "9"), ref="multiubuntu_test_06"),
    _ksp("it can audit accessing a file from source path",
         Apply("multiubuntu/ksp-group-2-audit-file-path-from-source-path.yaml"), _w("policy", "File", U4),
         Run(U4, "cat /secret.txt", Has("secret file")), _audit("ksp-group-2-audit-file-path-from-source-path", "5")),
    _ksp("it can audit accessing a file directory recursively",
         Apply("multiubuntu/ksp-ubuntu-1-audit-file-dir.yaml"), _w("policy", "File", U1),
         Run(U1, "cat /credentials/password", Has("password file")), _audit("ksp-ubuntu-1-audit-file-dir", "5"),
         Run(U1, "cat /credentials/keys/priv.key", Has("key file")), _audit("ksp-ubuntu-1-audit-file-dir", "5"),
         ref="github_test_02"),
    _ksp("it can block accessing a file from source path",
         Apply("multiubuntu/ksp-group-2-block-file-path-from-source-path.yaml"), _w("policy", "File", U4),
         Run(U4, "cat /secret.txt", Re("secret.txt.*Permission denied"), eventual=True),
         _deny("ksp-group-2-block-file-path-from-source-path", "5"), ref="multiubuntu_test_18, github_test_04"),
    _ksp("it can allow accessing a file owner only from source path",
         Apply("multiubuntu/ksp-group-2-allow-file-path-owner-from-source-path.yaml"), _w("policy", "File", U4),
         Run(U4, SECRET, SECRET_DENIED, eventual=True), _posture(Resource="secret_data1.txt"),
         Run(U4, AS_USER1_CAT, Has("secret file user1"))),
    _ksp("it can audit accessing a file owner only from source path",
         Apply("multiubuntu/ksp-group-2-audit-file-path-owner-from-source-path.yaml"), _w("policy", "File", U4),
         Run(U4, SECRET, Has("secret file user1")), _audit("ksp-group-2-audit-file-path-owner-from-source-path", "7")),
    _ksp("it can audit accessing a file except readonly access from owner",
         Apply("multiubuntu/ksp-ubuntu-1-audit-file-access-owner-readonly.yaml"), _w("policy", "File", U1),
         Run(U1, "touch /home/user1/new1", ANY, eventual=True),
         _audit("ksp-ubuntu-1-audit-file-access-owner-readonly", "5"),
         _w("system", "File", U1), Run(U1, AS_USER1_CAT, Has("secret file user1")),
         Log({"Source": "secret_data1.txt", "Result": "Passed"})),
    _ksp("it can block accessing a file owner only from source path",
         Apply("multiubuntu/ksp-group-2-block-file-path-owner-from-source-path.yaml"), _w("policy", "File", U4),
         Run(U4, SECRET, SECRET_DENIED, eventual=True),
         _deny("ksp-group-2-block-file-path-owner-from-source-path", "7"),
         _w("system", "File", U4), Run(U4, AS_USER1_CAT, Has("secret file user1")),
         Log({"Resource": "secret_data1.txt", "Result": "Passed"})),
    _ksp("it can block accessing a file using file pattern except readonly access from owner",
         Apply("multiubuntu/ksp-ubuntu-1-block-file-pattern-owner-readonly.yaml"), _w("policy", "File", U1),
         Run(U1, SECRET, SECRET_DENIED, eventual=True), _deny("ksp-ubuntu-1-block-file-pattern-owner-readonly", "5"),
         _w("system", "File", U1), Run(U1, AS_USER1_CAT, Has("secret file user1")),
         Log({"Resource": "secret_data1.txt", "Result": "Passed"}),
         _w("policy", "File", U1), Run(U1, "echo root >> /home/user1/secret_data1.txt", SECRET_DENIED),
         _deny("ksp-ubuntu-1-block-file-pattern-owner-readonly", "5"),
         _w("policy", "File", U1), Run(U1, "su - user1 -c 'echo test >> /home/user1/secret_data1.txt'", SECRET_DENIED),
         _deny("ksp-ubuntu-1-block-file-pattern-owner-readonly", "5"), ref="multiubuntu_test_27, github_test_08"),
    _ksp("it can block all the access to a directory recursively except readonly by the owner",
         Apply("multiubuntu/ksp-ubuntu-3-block-file-dir-recursive-owner-readonly.yaml"), _w("policy", "File", U3),
         Run(U3, "cat /home/user1/dir1/key1.txt", Re(r"key1\.txt.*Permission denied"), eventual=True),
         _deny("ksp-ubuntu-3-block-file-dir-recursive-owner-readonly", "7"),
         Run(U3, AS_USER1_CAT_ABS, Has("secret file user1")),
         Run(U3, "su - user1 -c 'cat /home/user1/dir1/key1.txt'", Has("key file 1")),
         _w("policy", "File", U3), Run(U3, "echo root >> /home/user1/secret_data1.txt", SECRET_DENIED),
         _deny("ksp-ubuntu-3-block-file-dir-recursive-owner-readonly", "7"),
         Run(U3, "su - user1 -c 'echo user1 >> /home/user1/secret_data1.txt'", SECRET_DENIED),
         _deny("ksp-ubuntu-3-block-file-dir-recursive-owner-readonly", "7"),
         Run(U3, "su - user1 -c 'echo user1 >> /home/user1/dir1/key1.txt'", Re(r"key1\.txt.*Permission denied")),
         _deny("ksp-ubuntu-3-block-file-dir-recursive-owner-readonly", "7"), ref="multiubuntu_test_25, github_test_07"),
    _ksp("it can block all the access to a directory except readonly by the owner",
         Apply("multiubuntu/ksp-ubuntu-3-block-file-dir-owner-readonly.yaml"), _w("policy", "File", U3),
         Run(U3, SECRET, SECRET_DENIED, eventual=True), _deny("ksp-ubuntu-3-block-file-dir-owner-readonly", "7"),
         _w("system", "File", U3), Run(U3, AS_USER1_CAT_ABS, Has("secret file user1")),
         Log({"Resource": "secret_data1.txt", "Result": "Passed"}),
         _w("policy", "File", U3), Run(U3, "echo root >> /home/user1/secret_data1.txt", SECRET_DENIED),
         _deny("ksp-ubuntu-3-block-file-dir-owner-readonly", "7"),
         Run(U3, "su - user1 -c 'echo user1 >> /home/user1/secret_data1.txt'", SECRET_DENIED),
         _deny("ksp-ubuntu-3-block-file-dir-owner-readonly", "7"), ref="multiubuntu_test_26"),
    _ksp("it will allow a file path accessible read-only to owner from source path",
         Apply("multiubuntu/ksp-ubuntu-4-allow-file-path-owner-readonly-from-source-path.yaml"),
         _w("policy", "File", U4),
         Run(U4, "./readwrite -r /home/user1/secret_data1.txt", Re("./readwrite: Permission denied"), eventual=True),
         _posture(),
         Run(U4, "./readwrite -w /home/user1/secret_data1.txt", Re("./readwrite: Permission denied")), _posture(),
         _w("system", "File", U4), Run(U4, "su - user1 -c './readwrite -r /home/user1/secret_data1.txt'", Has("s"))),
    _ksp("it will block a file path access except read-only accessible to owner from source path",
         Apply("multiubuntu/ksp-ubuntu-4-block-file-path-owner-readonly.yaml"), _w("policy", "File", U4),
         Run(U4, "su - user1 -c '/readwrite -w /home/user1/secret_data1.txt'", Re("Error"), eventual=True),
         _deny("ksp-ubuntu-4-block-file-path-owner-readonly", "10"),
         Run(U4, "./readwrite -w /home/user1/secret_data1.txt", Has("Error")),
         _deny("ksp-ubuntu-4-block-file-path-owner-readonly", "10"),
         Run(U4, SECRET, SECRET_DENIED), _deny("ksp-ubuntu-4-block-file-path-owner-readonly", "10"),
         _w("system", "File", U4), Run(U4, AS_USER1_CAT_ABS, Has("secret file user1")),
         Log({"Resource": "secret_data1.txt", "Result": "Passed"}), ref="multiubuntu_test_23"),
    _ksp("it will block a file path access except read-only accessible to owner from source path",
         Apply("multiubuntu/ksp-ubuntu-4-block-file-path-owner-readonly-from-source-path.yaml"),
         _w("policy", "File", U4),
         Run(U4, "su - user1 -c '/readwrite -w /home/user1/secret_data1.txt'", Re("Error"), eventual=True),
         _deny("ksp-ubuntu-4-block-file-path-owner-readonly-from-source-path", "10"),
         Run(U4, "./readwrite -w /home/user1/secret_data1.txt", Re("Error")),
         _deny("ksp-ubuntu-4-block-file-path-owner-readonly-from-source-path", "10"),
         Run(U4, "su - user1 -c '/readwrite -w /home/user1/secret_data1.txt'", Re("Error!")),
         _deny("ksp-ubuntu-4-block-file-path-owner-readonly-from-source-path", "10"),
         _w("system", "File", U4), Run(U4, AS_USER1_CAT_ABS, ANY, eventual=True),
         Log({"Resource": "secret_data1.txt", "Result": "Passed"}), ref="multiubuntu_test_24", occurrence=2),
    _ksp("it can allow readonly access to file path by owner only",
         Apply("multiubuntu/ksp-ubuntu-4-allow-file-path-owner-readonly.yaml"), _w("policy", "File", U4),
         Run(U4, SECRET, SECRET_DENIED, eventual=True), _posture(Resource="secret_data1.txt"),
         Run(U4, AS_USER1_CAT_ABS, Re("secret file user1")),
         _w("policy", "File", U4),
         Run(U4, "su - user1 -c 'cat /home/user1/otherfile.txt'", Re(r"otherfile\.txt.*Permission denied")),
         _posture(Resource="otherfile.txt"), ref="multiubuntu_test_22, github_test_06"),
    _ksp("it can allow access to a file by the owner only",
         Apply("multiubuntu/ksp-ubuntu-3-allow-file-path-owner.yaml"), _w("policy", "File", U3),
         Run(U3, SECRET, SECRET_DENIED, eventual=True), _posture(Resource="secret_data1"),
         Run(U3, AS_USER1_CAT_ABS, Has("secret file user1")),
         Run(U3, "su - user1 -c 'echo user1 >> /home/user1/secret_data1.txt'", ANY, eventual=True),
         ref="multiubuntu_test_21"),
    _ksp("it can block access to file path from source path except readonly access is allowed",
         Apply("multiubuntu/ksp-ubuntu-4-block-file-path-readonly-from-source-path.yaml"), _w("system", "File", U4),
         Run(U4, "./readwrite -r /credentials/password", Has("p"), eventual=True),
         Log({"Resource": "/credentials/password", "Result": "Passed"}),
         _w("policy", "File", U4), Run(U4, "./readwrite -w /credentials/password", Re(""), eventual=True),
         _deny("ksp-ubuntu-4-block-file-path-readonly-from-source-path", "10"),
         _w("system", "File", U4), Run(U4, "./readwrite -r /secret.txt", Has("s"), eventual=True),
         Log({"Resource": "secret.txt", "Result": "Passed"}), ref="multiubuntu_test_20"),
    _ksp("it can allow readonly access to a file path from given source path",
         Apply("multiubuntu/ksp-ubuntu-4-allow-file-path-readonly-from-source-path.yaml"),
         Run(U4, "./readwrite -r /credentials/password", Has("p"), eventual=True),
         _w("policy", "File", U4), Run(U4, "./readwrite -w /credentials/password", ANY, eventual=True),
         _posture(Resource="password"),
         Run(U4, "./readwrite -r /secret.txt", ANY, eventual=True), _posture(Resource="secret.txt"),
         ref="multiubuntu_test_19"),
    _ksp("it can block access to a file path except readonly access is allowed",
         Apply("multiubuntu/ksp-ubuntu-4-block-file-path-readonly.yaml"), _w("policy", "File", U4),
         Run(U4, "echo test >> /credentials/password", Re(".*Permission denied"), eventual=True),
         _deny("ksp-ubuntu-4-block-file-path-readonly", "10"),
         _w("system", "File", U4), Run(U4, "cat /credentials/password", Has("password file"), eventual=True),
         Log({"Source": "/credentials/password", "Result": "Passed"}), ref="multiubuntu_test_16"),
    _ksp("it can audit access to a dir except readonly access is allowed",
         Apply("multiubuntu/ksp-ubuntu-4-audit-file-path-readonly.yaml"), _w("policy", "File", U4),
         Run(U4, "touch /dev/shm/new", ANY, eventual=True), _audit("ksp-ubuntu-4-audit-file-path-readonly", "10"),
         _w("system", "File", U4), Run(U4, "cat /dev/shm/new", ANY, eventual=True),
         Log({"Source": "/bin/cat /dev/shm/new", "Result": "Passed"})),
    _ksp("it can block access to the files that following a given pattern",
         Apply("multiubuntu/ksp-ubuntu-1-block-file-pattern.yaml"), _w("policy", "File", U1),
         Run(U1, "cat /etc/shadow", Re("shadow.*Permission denied"), eventual=True),
         _deny("ksp-ubuntu-1-block-file-pattern", "5"),
         Run(U1, "cat /etc/gshadow", Re("gshadow.*Permission denied")), _deny("ksp-ubuntu-1-block-file-pattern", "5"),
         ref="multiubuntu_test_11, github_test_03"),
    _ksp("it can block access to a file directory recursively",
         Apply("multiubuntu/ksp-ubuntu-1-block-file-dir-recursive.yaml"), _w("policy", "File", U1),
         Run(U1, "cat /run/secrets/kubernetes.io/serviceaccount/token", Re("token.*Permission denied"), eventual=True),
         _deny("ksp-ubuntu-1-block-file-dir-recursive", "8"), ref="multiubuntu_test_13"),
    _ksp("it can block access to a file directory recursively using native apparmor spec", na=APPARMOR,
         ref="multiubuntu_test_10, github_test_11"),
    _ksp("it can allow readonly access to a file path",
         Apply("multiubuntu/ksp-ubuntu-4-allow-file-path-readonly.yaml"), _w("policy", "File", U4),
         Run(U4, "echo test >> /credentials/password", Re(".*Permission denied"), eventual=True),
         _posture(Resource="password"),
         _w("system", "File", U4), Run(U4, "cat /credentials/password", Has("password file"), eventual=True),
         ref="multiubuntu_test_09"),
]


# -- networktests -----------------------------------------------------------------------------------------
def _net(title: str, *steps: Step, **kw: Any) -> Spec:
    return _spec("networktests", MULTIUBUNTU, title, *steps, **kw)


REMOTE_PAGE = "curl 40.114.177.156"
LOCAL_PAGE = "curl -sS http://127.0.0.1/kubearmor-suite.html"
PAGE_NOTE = (f"`{REMOTE_PAGE}` (a remote web page) -> `{LOCAL_PAGE}`: the same page shape from the pod's own "
             "apache2 (started by KubeArmor's entrypoint); there is no route off this machine. An expected Source "
             "(KubeArmor's `/usr/bin/curl 40.114.177.156`) is that command line as run here")
NETWORK = [
    _net("it can audit all network traffic on icmp protocol",
         Apply("res/ksp-ubuntu-1-audit-net-icmp.yaml"), _w("policy", "Network", U1),
         Run(U1, "ping -c 1 127.0.0.1", Re("PING.*127.0.0.1"), eventual=True),
         _audit("ksp-ubuntu-1-audit-net-icmp", "8"), ref="multiubuntu_test_07, github_test_09"),
    _net("it can block all network traffic on net-raw protocol",
         Apply("res/ksp-ubuntu-1-block-net-raw-cap.yaml"), Watch("policy", "", "Capabilities", U1),
         Run(U1, "arping -c 1 127.0.0.1", Re("CAP_NET_RAW.*required"), eventual=True),
         Alert({"PolicyName": "ksp-ubuntu-1-block-net-raw-cap", "Severity": "1", "Action": "Block"}),
         ref="multiubuntu_test_03, github_test_10", xfail=KILLED),
    _net("it can allow all network traffic on tcp protocol from source path",
         _w("system", "Network", U1), Run(U1, LOCAL_PAGE, Re("<html>((?:.*\r?\n?)*)</html>"), eventual=True),
         Log({"Result": "Passed", "Source": f"/usr/bin/{LOCAL_PAGE}"}),  # the command line as run
         Apply("res/ksp-ubuntu-1-allow-net-tcp-from-source.yaml"), _w("policy", "Network", U1),
         Run(U1, "curl duckduckgo.com", Re("Could not resolve host: duckduckgo.com"), eventual=True),
         _posture(), ref="github_test_12", notes=(PAGE_NOTE,)),
    _net("it can audit all network traffic on net-raw protocol",
         Apply("res/ksp-ubuntu-1-audit-net-raw.yaml"), _w("policy", "Network", U1),
         Run(U1, "arping -c 1 127.0.0.1", Re("ARPING 127.0.0.1"), eventual=True),
         _audit("ksp-ubuntu-1-audit-net-raw", "8"), ref="github_test_13"),
    _net("it can block all network traffic on net-raw protocol",
         Apply("res/ksp-ubuntu-1-block-net-raw.yaml"), _w("policy", "Network", U1),
         Run(U1, "arping -c 1 127.0.0.1", Re("arping.*Permission denied"), eventual=True),
         _deny("ksp-ubuntu-1-block-net-raw", "8"), ref="multiubuntu_test_28, github_test_14", occurrence=2,
         xfail=KILLED),
    _net("it can block all network traffic",
         Apply("res/ksp-ubuntu-1-block-net-all.yaml"), _w("policy", "Network", U1),
         Run(U1, "ping -c 1 127.0.0.1", Re("ping.*Permission denied"), eventual=True),
         _deny("ksp-ubuntu-1-block-net-all", "8"), xfail=KILLED_UNIX),
    _net("it can block network traffic based on dns queries", na=BPF_ONLY_DNS),
    _net("it can block network traffic based on dns queries for subdomains", na=BPF_ONLY_DNS),
    _net("can whitelist use of certain network protocols used by a package, such as tcp",
         Note("`kubectl annotate ns multiubuntu kubearmor-network-posture=block`: the stack's default network "
              "posture is block (as KubeArmor's CI config), so the annotation changes nothing"),
         Apply("res/ksp-ubuntu-1-allow-net-tcp-from-source.yaml"),
         _w("system", "Network", U1), Run(U1, LOCAL_PAGE, Re("<html>((?:.*\r?\n?)*)</html>"), eventual=True),
         _w("policy", "Network", U1),
         Run(U1, "curl duckduckgo.com", Re("Could not resolve host: duckduckgo.com"), eventual=True),
         _posture(), notes=(PAGE_NOTE,)),
]


# -- csp --------------------------------------------------------------------------------------------------
def _csp(title: str, *steps: Step, **kw: Any) -> Spec:
    return _spec("csp", (NGINX1, NGINX2), title, *steps, notes=(IMAGE_NOTES["csp"],), **kw)


APT_PASSED = Log({"Result": "Passed", "Resource": "/usr/bin/apt"})
CSP = [
    _csp("can block execution of pkg mgmt tools apt, In operator",
         Apply("res/csp-in-operator-block-process.yaml"), Watch("policy", "nginx1", "Process", N1),
         Run(N1, "apt", Re("apt.*Permission denied"), eventual=True), _deny("csp-in-operator-block-process", "8"),
         Watch("system", "nginx2", "Process", N2), Run(N2, "apt", ANY, eventual=True), APT_PASSED,
         Deploy(NGINX_LATER), Watch("policy", "nginx-later", "Process", NL),
         Run(NL, "apt", Re("apt.*Permission denied"), eventual=True), _deny("csp-in-operator-block-process", "8"),
         ref="cluster_policy_test_1"),
    _csp("can block execution of access to file, In operator",
         Apply("res/csp-in-operator-block-file-access.yaml"), Watch("policy", "nginx2", "File", N2),
         Run(N2, "cat /etc/host.conf", Re("host.conf.*Permission denied"), eventual=True),
         _deny("csp-in-operator-block-file-access", "8"),
         Watch("system", "nginx1", "File", N1), Run(N1, "cat /etc/host.conf", Has("multi on"), eventual=True),
         Log({"Result": "Passed", "Source": "/usr/bin/cat /etc/host.conf"}), ref="cluster_policy_test_2"),
    _csp("can block execution of pkg mgmt tools apt, NotIn operator",
         Apply("res/csp-not-in-operator-block-process.yaml"), Watch("policy", "nginx2", "Process", N2),
         Run(N2, "apt", Re("apt.*Permission denied"), eventual=True), _deny("csp-not-in-operator-block-process", "8"),
         Watch("system", "nginx1", "Process", N1), Run(N1, "apt", ANY), APT_PASSED, ref="cluster_policy_test_3"),
    _csp("can block execution of access to file, NotIn operator",
         Apply("res/csp-not-in-operator-block-file-access.yaml"), Watch("policy", "nginx1", "File", N1),
         Run(N1, "cat /etc/host.conf", Re("host.conf.*Permission denied"), eventual=True),
         _deny("csp-not-in-operator-block-file-access", "8"),
         Watch("system", "nginx2", "File", N2), Run(N2, "cat /etc/host.conf", Has("multi on")),
         Log({"Result": "Passed", "Source": "/usr/bin/cat /etc/host.conf"}), ref="cluster_policy_test_4"),
    _csp("can block execution of specific workload based on labels, In expression",
         Apply("res/csp-matchlabels-in-block-process.yaml"), Watch("policy", "nginx1", "Process", N1),
         Run(N1, "apt", Re("apt.*Permission denied"), eventual=True), _deny("csp-matchlabels-in-block-process", "8"),
         Watch("system", "nginx2", "Process", N2), Run(N2, "apt", ANY, eventual=True), APT_PASSED,
         Deploy(DEBIAN_APP), Watch("system", "nginx1", "Process", DEB), Run(DEB, "apt", ANY, eventual=True), APT_PASSED,
         ref="cluster_policy_test_5"),
    _csp("can block execution of specific workload based on labels, NotIn expression",
         Apply("res/csp-matchlabels-not-in-block-process.yaml"), Watch("system", "nginx1", "Process", N1),
         Run(N1, "apt", ANY, eventual=True), APT_PASSED,
         Watch("system", "nginx2", "Process", N2), Run(N2, "apt", ANY, eventual=True), APT_PASSED,
         Deploy(DEBIAN_APP), Watch("policy", "nginx1", "Process", DEB),
         Run(DEB, "apt", Re("apt.*Permission denied"), eventual=True),
         _deny("csp-matchlabels-not-in-block-process", "8"),
         ref="cluster_policy_test_5"),
]


# -- multicontainer ---------------------------------------------------------------------------------------
def _mc(title: str, *steps: Step, **kw: Any) -> Spec:
    return _spec("multicontainer", (MULTICONTAINER,), title, *steps, **kw)


def _ls(container: str, denied: bool) -> Run:
    m: Re | Not = Re(".*Permission denied")
    return Run(MC, "ls", m if denied else Not(m), container=container)


MCW = Watch("policy", "multicontainer", "Process", MC)
MULTI = [
    _mc("can block ls in container-1 only", Apply("manifests/container-1-ls-block.yaml"), MCW, _ls("container-1", True),
        Alert({"PolicyName": "container-1-block-ls", "Severity": "2", "ContainerName": "container-1"}),
        _ls("container-2", False)),
    _mc("Can enforce on all containers with empty array", Apply("manifests/empty-array-ls-block.yaml"), MCW,
        _ls("container-1", True),
        Alert({"PolicyName": "empty-array-ls-block", "Severity": "4", "ContainerName": "container-1"}),
        _ls("container-2", True),
        Alert({"PolicyName": "empty-array-ls-block", "Severity": "4", "ContainerName": "container-2"})),
    _mc("Can enforce on all containers with no array in labels", Apply("manifests/empty-label-ls-block.yaml"), MCW,
        _ls("container-1", True),
        Alert({"PolicyName": "empty-array-ls-block", "Severity": "4", "ContainerName": "container-1"}),
        _ls("container-2", True),
        Alert({"PolicyName": "empty-array-ls-block", "Severity": "4", "ContainerName": "container-2"})),
    _mc("Can enforce on container-1 with malformated array", Apply("manifests/malformated-array-ls-block.yaml"), MCW,
        _ls("container-1", True),
        Alert({"PolicyName": "malformated-array-ls-block", "Severity": "4", "ContainerName": "container-1"}),
        _ls("container-2", False)),
]


# -- privileged -------------------------------------------------------------------------------------------
def _priv(title: str, *steps: Step, notes: tuple[str, ...] = (), **kw: Any) -> Spec:
    return _spec("privileged", (PRIVILEGED, CAPS), title, *steps, notes=(PRIVILEGED_NOTE, *notes), **kw)


SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
MOUNT_NOTE = ("`mount /dev/loop0 /mnt/test` -> `mount -t tmpfs tmpfs /mnt/test`: the same mount(2) from the "
              "container, without attaching this shared machine's loop device")
PRIVILEGED_NOTE = ("privileged/ALL capabilities: this machine's capability bounding set lacks CAP_SYS_RESOURCE, "
                   "so Docker cannot start --privileged or --cap-add ALL containers as such: they get every other "
                   "capability (and, for privileged, no seccomp filter and unmasked /proc, /sys)")
SLIP_NOTE = ("upstream execs in the privileged pod with container caps-container, which that pod does not have "
             "(the exec fails and the spec checks nothing); run in the caps pod, as the title says")
PRIVILEGED_SPECS = [
    _priv("policies work for containers with all Capabilities enabled",
          Apply("manifests/caps-container-block-ls.yaml"), Watch("policy", "privileged", "Process", CAP),
          Run(CAP, "ls /", Re(".*Permission denied"), container="caps-container"),
          Alert({"NamespaceName": "privileged", "ContainerName": "caps-container",
                 "PolicyName": "caps-container-block-ls", "Action": "Block", "Result": DENIED})),
    _priv("policies work for privileged containers in Containerd",
          na="containerd only (KubeArmor skips it for the docker and cri-o runtimes); the runtime here is Docker"),
    _priv("won't block mount by default for privileged/all capabilities enabled containers",
          Watch("policy", "privileged", "Syscall", PRIV),
          Run(PRIV, "mkdir /mnt/test", None, container="priv-container"),
          Run(PRIV, "mount -t tmpfs tmpfs /mnt/test", None, container="priv-container"),
          NoAlert({"NamespaceName": "privileged", "ContainerName": "priv-container"}), notes=(MOUNT_NOTE,)),
    _priv("won't block mount by default for all capabilities enabled containers",
          Watch("policy", "privileged", "Syscall", PRIV), Apply("manifests/caps-container-block-ls.yaml"),
          Watch("policy", "privileged", "Syscall", CAP),
          Run(CAP, "mkdir /mnt/test", None, container="caps-container"),
          Run(CAP, "mount -t tmpfs tmpfs /mnt/test", None, container="caps-container"),
          NoAlert({"NamespaceName": "privileged", "ContainerName": "caps-container"}), notes=(MOUNT_NOTE, SLIP_NOTE)),
    _priv("won't block umount by default for privileged containers",
          Watch("policy", "privileged", "Syscall", PRIV),
          Run(PRIV, f"umount {SA_DIR}", None, container="priv-container"),
          NoAlert({"NamespaceName": "privileged", "ContainerName": "priv-container"}),
          Run(PRIV, f"umount {SA_DIR}", Re("umount.*must be superuser to unmount"), container="unpriv-container")),
    _priv("won't block umount by default for all capabilities enabled containers",
          Watch("policy", "privileged", "Syscall", CAP),
          Run(CAP, f"umount {SA_DIR}", None, container="caps-container"),
          NoAlert({"NamespaceName": "privileged", "ContainerName": "caps-container"}), notes=(SLIP_NOTE,)),
]


# -- smoke, throttling, visibility (wordpress-mysql) --------------------------------------------------------
def _smoke(title: str, *steps: Step, **kw: Any) -> Spec:
    return _spec("smoke", (WORDPRESS, MYSQL), title, *steps, notes=(IMAGE_NOTES["smoke"],), **kw)


WPNS = "wordpress-mysql"
CONFIG_ALERT = Alert({"PolicyName": "ksp-wordpress-block-config", "Severity": "10",
                      "Message": "blocked access to wordpress configuration file"})
SA_TOKEN = "/run/secrets/kubernetes.io/serviceaccount/token"
SMOKE = [
    _smoke("can block execution of pkg mgmt tools such as apt, apt-get",
           Apply("res/ksp-wordpress-block-process.yaml"), Watch("policy", WPNS, "Process", WP),
           Run(WP, "apt", Re("apt.*Permission denied"), eventual=True),
           Alert({"PolicyName": "ksp-wordpress-block-process", "Severity": "3"})),
    _smoke("can block execution of access to sensitive file with abs path",
           Apply("res/ksp-wordpress-block-config.yaml"), Watch("policy", WPNS, "File", WP),
           Run(WP, "cat /var/www/html/wp-config.php", Re("wp-config.php.*Permission denied"), eventual=True),
           CONFIG_ALERT),
    _smoke("can block execution of access to sensitive file with rel path",
           Apply("res/ksp-wordpress-block-config.yaml"), Watch("policy", WPNS, "File", WP),
           Run(WP, "cat wp-config.php", Re("wp-config.php.*Permission denied"), eventual=True), CONFIG_ALERT),
    _smoke("can block execution of access to service account token",
           Apply("res/ksp-wordpress-block-sa.yaml"), Watch("policy", WPNS, "File", WP),
           Run(WP, f"cat {SA_TOKEN}", Re("token.*Permission denied"), eventual=True),
           Alert({"PolicyName": "ksp-wordpress-block-sa", "Severity": "7"})),
    _smoke("allow access for service account token to only cat",
           Apply("res/ksp-wordpress-lenient-allow-sa.yaml"), Watch("policy", WPNS, "File", WP),
           Run(WP, f"head {SA_TOKEN}", Re("token.*Permission denied"), eventual=True),
           Alert({"PolicyName": "ksp-wordpress-lenient-allow-sa", "Severity": "7", "Source": "head"}),
           Run(WP, f"cat {SA_TOKEN}", Not(Re("Permission denied")), eventual=True),
           Run(WP, "cat /etc/passwd", Not(Re("Permission denied")), eventual=True),
           Run(WP, "head /etc/passwd", Not(Re("Permission denied")), eventual=True),
           NoAlert({"PolicyName": "ksp-wordpress-lenient-allow-sa", "Severity": "7", "Source": "cat"})),
    _smoke("can audit access to sensitive data path",
           Apply("res/ksp-mysql-audit-dir.yaml"), Watch("policy", WPNS, "File", SQL),
           Run(SQL, "touch /var/lib/mysql/{rand}", ANY, eventual=True),
           Alert({"PolicyName": "ksp-mysql-audit-dir", "Severity": "5"}),
           Run(SQL, "rm /var/lib/mysql/{rand}", ANY, eventual=True)),
    _smoke("can enforce multiple rules targeting same pod",
           Apply("res/ksp-wordpress-two-policies.yaml"), Watch("policy", WPNS, "File", SQL),
           Run(WP, "cat /etc/passwd", Re("/etc/passwd.*Permission denied"), eventual=True),
           Run(WP, "cat /etc/shadow", Re("/etc/shadow.*Permission denied"), eventual=True)),
    _smoke("can block write access and only allow read access to mounted files",
           Apply("res/ksp-wordpress-block-mount-file.yaml"), Watch("policy", WPNS, "File", WP),
           Run(WP, "touch /dev/shm/new", Re("Permission denied"), eventual=True),
           Alert({"PolicyName": "ksp-wordpress-block-mount-file", "Severity": "5"})),
]
THROTTLE_NOTE = ("the ConfigMap (alertThrottling=true, maxAlertPerSec=2, throttleSec=60) is the session stack's "
                 "settings (BULWARK_ALERT_THROTTLING, BULWARK_MAX_ALERTS_PER_SEC=2, BULWARK_THROTTLE_SEC=60): "
                 "Bulwark stores throttled alerts too (flagged Throttled), so the other specs, which read stored "
                 "alerts, are unaffected; 'no alert generated' reads as 'no alert pushed' (not Throttled)")
THROTTLING = [
    _spec("throttling", (WORDPRESS, MYSQL), "enabled with new throttling conditions",
          Note(THROTTLE_NOTE), Apply("res/ksp-wordpress-block-process.yaml"),
          Watch("all", WPNS, "AlertThreshold", WP),
          Run(WP, "count=0; while [ $count -lt 5 ]; do apt; count=$((count + 1)); done;",
              Re("apt.*Permission denied"), eventual=True),
          Alert({"Type": "SystemEvent", "Operation": "AlertThreshold"}),
          Watch("all", WPNS, "", WP), Run(WP, "apt update", Re("apt.*Permission denied"), eventual=True),
          NoAlert({"pushed": True}), notes=(IMAGE_NOTES["smoke"],)),
]
VIS_NA = (K8S_API + ": sets the namespace annotation kubearmor-visibility through the Kubernetes API; Docker "
          "workloads carry no namespace annotations (services/identity/composer.py takes them from the "
          "Kubernetes provider only) and the stack's visibility is one setting for the session")
VISIBILITY = [
    _spec("visibility", (WORDPRESS, MYSQL), "can get full visibility",
          Note("`AnnotateNS(wordpress-mysql, kubearmor-visibility, file,process,network,capabilities)`: the stack's "
               "default container visibility is exactly that (BULWARK_VISIBILITY_CONTAINERS)"),
          Watch("all", WPNS, "", WP), Run(WP, "ping google.com -c1", ANY, eventual=True),
          LogOps(("file", "process", "syscall", "network")), notes=(IMAGE_NOTES["smoke"],)),
    _spec("visibility", (), "can get only network visibility", na=VIS_NA),
    _spec("visibility", (), "can drop all visibility data", na=VIS_NA),
]

# -- syscalls ---------------------------------------------------------------------------------------------
SYW = Watch("policy", "syscalls", "Syscall", SYS)


def _sys(title: str, *steps: Step, **kw: Any) -> Spec:
    return _spec("syscalls", (SYSCALLS,), title, *steps, **kw)


def _unlink(dummy: str = "/dummy", via: str = "unlink") -> tuple[Run, Run]:
    return Run(SYS, f"touch {dummy}", ANY, eventual=True), Run(SYS, f"{via} {dummy}", ANY, eventual=True)


def _info(kind: str, title: str, policy: str, severity: str, message: str, occurrence: int) -> Spec:
    return _sys(title, Apply(f"manifests/{kind}/{policy}.yaml"), SYW, *_unlink("/home/dummy"),
                _audit(policy.replace(f"{kind}-", "audit-unlink-"), severity, Message=message), occurrence=occurrence)


SYSCALL_SPECS = [
    _sys("can detect unlink syscall", Apply("manifests/matchsyscalls/unlink.yaml"), SYW, *_unlink(),
         _audit("audit-all-unlink", "3")),
    _sys("can detect unlink syscall from dir source", Apply("manifests/matchsyscalls/unlink-fromsource.yaml"), SYW,
         Run(SYS, "cp /usr/bin/unlink /bin/unlink", ANY, eventual=True), *_unlink(via="/bin/unlink"),
         _audit("audit-unlink-fromsource", "4")),
    _sys("can detect unlink syscall from recursive dir source",
         Apply("manifests/matchsyscalls/unlink-fromsource-dir-recursive.yaml"), SYW,
         Run(SYS, "mkdir -p /foo/bar", ANY, eventual=True),
         Run(SYS, "cp /usr/bin/unlink /foo/bar/unlink", ANY, eventual=True), *_unlink(via="/foo/bar/unlink"),
         _audit("audit-unlink-fromsource-dir-recursive")),
    _sys("can detect unlink syscall from path source", Apply("manifests/matchsyscalls/unlink-fromsource-path.yaml"),
         SYW, Run(SYS, "cp /usr/bin/unlink /unlink", ANY, eventual=True), *_unlink(via="/unlink"),
         _audit("audit-unlink-fromsource-path")),
    _sys("can detect unlink syscall recursive target", Apply("manifests/matchpaths/unlink.yaml"), SYW,
         *_unlink("/home/dummy"), _audit("audit-unlink")),
    _sys("can detect unlink syscall targets absolute file path", Apply("manifests/matchpaths/unlink-file-path.yaml"),
         SYW, *_unlink(), _audit("audit-unlink-file-path")),
    _sys("can detect unlink syscall recursive target from absolute path",
         Apply("manifests/matchpaths/unlink-dir-recursive-fromsource-path.yaml"),
         Run(SYS, "cp /usr/bin/unlink /bin/unlink", ANY, eventual=True), SYW,
         *_unlink("/home/dummy", "/bin/unlink"), _audit("audit-unlink-dir-recursive-fromsource-path")),
    _sys("can detect unlink syscall recursive target from recursive dir",
         Apply("manifests/matchpaths/unlink-dir-recursive-fromsource-recursive-dir.yaml"), SYW,
         *_unlink("/home/dummy"), _audit("audit-unlink-dir-recursive-fromsource-recursive-dir")),
    _sys("can detect unlink syscall recursive target from dir",
         Apply("manifests/matchpaths/unlink-dir-recursive-fromsource-dir.yaml"),
         Run(SYS, "cp /usr/bin/unlink /bin/unlink", ANY, eventual=True), SYW,
         *_unlink("/home/dummy", "/bin/unlink"), _audit("audit-unlink-dir-recursive-fromsource-dir")),
]
for _n, _kind in ((1, "matchsyscalls"), (2, "matchpaths")):
    SYSCALL_SPECS += [
        _info(_kind, "can detect unlink syscall recursive target with global information",
              f"{_kind}-global-information", "8", "Global message", _n),
        _info(_kind, "can detect unlink syscall recursive target with local information",
              f"{_kind}-local-information", "8", "Local message", _n),
        _info(_kind, "can detect unlink syscall recursive target with local information when global is set",
              f"{_kind}-local-trumps-global-information", "7", "Local message", _n),
        _info(_kind, "can detect unlink syscall recursive target with missing local information when global is set",
              f"{_kind}-global-fill-missing-local-information", "7", "Local message", _n),
    ]
UPSTREAM_SKIP = "KubeArmor skips it unconditionally (Skip: alerts only being generated when something is blocked)"
SYSCALL_SPECS += [
    _sys("mount will be blocked by default for a pod", na=UPSTREAM_SKIP),
    _sys("umount will be blocked by default for a pod as the capability not added", na=UPSTREAM_SKIP),
]

# -- blockposture, presets, nsp, configmap ----------------------------------------------------------------
BLOCKPOSTURE = [
    _spec("blockposture", (NGINX_POSTURE,), "can whitelist certain files accessed by a package while blocking all "
          "other sensitive content",
          Note("namespace annotations kubearmor-{file,network,capabilities}-posture=block: the stack's default "
               "postures are block"),
          Apply("res/ksp-nginx-allow-file.yaml"), Watch("policy", "nginx-posture", "File", NGP),
          Run(NGP, "cat docker-entrypoint.sh", Re("cat.*Permission denied"), eventual=True, shell="sh"),
          Run(NGP, "cat /usr/share/nginx/html/index.html", Re("<!DOCTYPE html>((?:.*\r?\n?)*)</html>"), eventual=True,
              shell="sh"),
          Alert({"PolicyName": "DefaultPosture", "Action": "Block"}), notes=(IMAGE_NOTES["blockposture"],)),
]
_LS_PY = """# kubearmor-suite stand-in for ubuntu-w-utils:0.2's ls.py: run /bin/ls from memory (a memfd), no file
import os

fd = os.memfd_create("ls", 0)
with open("/bin/ls", "rb") as f:
    data = f.read()
while data:
    data = data[os.write(fd, data):]
os.execv(f"/proc/self/fd/{fd}", ["ls"])
"""
FILELESS = Pod("presets", "fileless", (("app", "fileless"),), (Container("fileless", "ubuntu"),),
               files=(("/ls.py", _LS_PY),))
KILLED_EXEC = ("known gap (README 'Presets'): here the eBPF signal enforcer kills a fileless exec (SIGKILL at "
               "sched_process_exec, Result 'Killed (SIGKILL)'), where KubeArmor's BPF-LSM refuses it (EACCES, "
               "'Permission denied')")
PRESET_NOTES = ("KubeArmor runs these only with its BPF-LSM enforcer; Bulwark claims filelessExec with its eBPF "
                "signal enforcer on this kernel (bulwark probe), so they run here",
                "kubearmor/ubuntu-w-utils:0.2's ls.py is not in the reference data: the pod has a stand-in that "
                "execs /bin/ls from a memfd (what the spec's name says it does)")
FP = FILELESS.key
OTHER = [
    _spec("presets", (FILELESS,), "can audit fileless execution",
          Apply("res/ksp-preset-audit-fileless.yaml"), Watch("policy", "presets", "Process", FP),
          Run(FP, "python3 ls.py", Not(Re("Permission denied")), shell="sh"),
          Alert({"PolicyName": "ksp-preset-audit-fileless", "Result": "Passed"}), notes=PRESET_NOTES),
    _spec("presets", (FILELESS,), "can block fileless execution",
          Apply("res/ksp-preset-block-fileless.yaml"), Watch("policy", "presets", "Process", FP),
          Run(FP, "python3 ls.py", Re(".*Permission denied"), shell="sh"),
          Alert({"PolicyName": "ksp-preset-block-fileless", "Result": DENIED}), notes=PRESET_NOTES,
          xfail=KILLED_EXEC),
    _spec("nsp", (), "can drop outgoing DNS packets",
          na="a KubeArmorNetworkPolicy enforced with nft on the node, checked by `nc -uvz 1.1.1.1 53` from the node: "
             "this machine has no route off it and no nc, and Bulwark stores KubeArmorNetworkPolicy without "
             "enforcing it (README)"),
]
CM_NA = (K8S_API + ": changes KubeArmor's kubearmor-config ConfigMap and namespace annotations at run time through "
         "the Kubernetes API")
CONFIGMAP = [_spec("configmap", (), t, na=CM_NA) for t in (
    "visibility will be set to configmap's value",
    "default posture will be set to global posture configs",
    "default posture will be set to global config posture for unannotated posture only",
    "visibility will default to ns annotation's value",
    "default posture will be unchanged after global configs changed",
    "respects DropResourceFromProcessLogs flag",
)]

# Order: the wordpress pod's throttling spec before smoke (its quiet period then holds nothing back that
# smoke reads: stored alerts are read); host scenarios run last (tests/kubearmor_suite/test_kubearmor.py).
SPECS: list[Spec] = (KSP + NETWORK + CSP + MULTI + PRIVILEGED_SPECS + SYSCALL_SPECS + THROTTLING + SMOKE + VISIBILITY
                     + BLOCKPOSTURE + OTHER + CONFIGMAP)
