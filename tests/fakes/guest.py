"""What the cloud stand-ins share: a guest machine played on loopback.

A guest is a real OpenSSH sshd on its own address 127.0.0.N, configured the way
cloud-init would configure it from `#cloud-config` user-data (the `ssh_keys`
ed25519 pair becomes the host key, `ssh_authorized_keys` may log in as a plain
login user, `runcmd` `shutdown` lines are read), with every session process
marked so that stopping the guest finds and ends them all. Used by
tests/fakes/vultr/standin.py and tests/fakes/aws/standin.py.
"""
import base64
import ctypes
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time

try:
    import yaml
except ImportError:  # a Python without PyYAML: use Debian's python3-yaml (scripts/setup.sh)
    sys.path.append("/usr/lib/python3/dist-packages")
    import yaml

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


def die_with_parent():
    # An sshd must not outlive a stand-in that was SIGKILLed. Safe here: the
    # spawning thread (the state thread) lives as long as the process.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def read_file(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


def process_table(env_uid=None):
    """{pid: (ppid, state)} of every live process, and {pid: environ bytes} of
    those owned by `env_uid` (of all when None)."""
    table, envs = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        st = read_file("/proc/%s/stat" % d)
        if not st:
            continue
        fields = st[st.rfind(")") + 2:].split()
        table[int(d)] = (int(fields[1]), fields[0])
        try:
            if env_uid is not None and os.stat("/proc/" + d).st_uid != env_uid:
                continue
        except OSError:
            continue
        envs[int(d)] = read_file("/proc/%s/environ" % d, "rb") or b""
    return table, envs


def kill_instance_processes(marker_name, inst_id, roots, config_path, login_uid=None):
    """SIGKILLs the instance's sshd (roots), its descendants, and every process
    marked with the instance's SetEnv marker or running its sshd_config.

    Only the login user's processes can carry the marker (`login_uid` narrows the
    environ reads to them), and the sshd_config search is needed only when the
    listener's pid is unknown: with many instances ending at once, reading every
    process's environ and cmdline on each round made a DELETE take a second."""
    marker = ("%s=%s" % (marker_name, inst_id)).encode()
    me = os.getpid()
    for _ in range(10):
        table, envs = process_table(login_uid)
        keep = {p for p in roots if p in table}
        for pid, env in envs.items():
            if pid != me and marker in env.split(b"\0"):
                keep.add(pid)
        if config_path and not keep.intersection(roots):
            for pid in table:
                if pid == me:
                    continue
                cmd = read_file("/proc/%d/cmdline" % pid, "rb") or b""
                if config_path.encode() in cmd.split(b"\0"):
                    keep.add(pid)
        grew = True
        while grew:
            grew = False
            for pid, (ppid, _st) in table.items():
                if pid not in keep and ppid in keep:
                    keep.add(pid)
                    grew = True
        alive = [p for p in keep if table.get(p, (0, "Z"))[1] != "Z" and p != me]
        if not alive:
            return
        for p in alive:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)


def ensure_login_user(name_as_root):
    """(name, uid, gid) of the user sessions log in as: `name_as_root` when run
    as root (created if needed), else the current user."""
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.geteuid())
        return pw.pw_name, pw.pw_uid, pw.pw_gid
    try:
        pwd.getpwnam(name_as_root)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", name_as_root], capture_output=True)
    # With UsePAM no, sshd refuses accounts whose password is locked ('!'), even for keys.
    subprocess.run(["usermod", "-p", "*", name_as_root], check=True, capture_output=True)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    pw = pwd.getpwnam(name_as_root)
    return pw.pw_name, pw.pw_uid, pw.pw_gid


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shutdown_delay_minutes(args):
    """Minutes until the power-off that `shutdown ARGS` (or poweroff/halt) asks
    for: 0 for `now` or no time with poweroff/halt, 1 for `shutdown` without a
    time (its default), N for `+N`."""
    words = [w for w in args if not w.startswith("-")]
    if not words or words[0] == "now":
        return 0
    m = re.fullmatch(r"\+(\d+)", words[0])
    return int(m.group(1)) if m else 0


def parse_user_data(b64):
    """What cloud-init would act on: host key pair, authorized keys, shutdown minutes."""
    out = {"host_private": None, "host_public": None, "authorized_keys": [],
           "shutdown_minutes": None}
    if not b64:
        return out
    text = base64.b64decode(b64).decode("utf-8", "replace")
    if not text.startswith("#cloud-config"):
        return out
    doc = yaml.safe_load(text) or {}
    if not isinstance(doc, dict):
        return out
    keys = doc.get("ssh_keys") or {}
    out["host_private"] = keys.get("ed25519_private")
    out["host_public"] = keys.get("ed25519_public")
    auth = list(doc.get("ssh_authorized_keys") or [])
    for u in doc.get("users") or []:
        if isinstance(u, dict):
            auth += list(u.get("ssh_authorized_keys") or [])
    out["authorized_keys"] = [str(k).strip() for k in auth if k]
    for cmd in doc.get("runcmd") or []:
        line = " ".join(map(str, cmd)) if isinstance(cmd, list) else str(cmd)
        m = re.search(r"\bshutdown\b(?:\s+-[a-zA-Z]+)*\s+(now|\+(\d+))", line)
        if m:
            out["shutdown_minutes"] = 0 if m.group(1) == "now" else int(m.group(2))
    return out


def write_host_key(inst_dir, ud, comment):
    """Writes the host key from the user-data (or a fresh one) into `inst_dir`;
    returns (private key path, public key line)."""
    key = os.path.join(inst_dir, "host_ed25519")
    if ud["host_private"]:
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(ud["host_private"].strip() + "\n")
        pub = ud["host_public"] or subprocess.run(
            ["ssh-keygen", "-y", "-f", key], capture_output=True, text=True).stdout
    else:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                        "-f", key], check=True, capture_output=True)
        pub = read_file(key + ".pub") or ""
    pub = pub.strip()
    with open(key + ".pub", "w") as f:
        f.write(pub + "\n")
    return key, pub


def write_authorized_keys(inst_dir, keys):
    ak = os.path.join(inst_dir, "authorized_keys")
    with open(ak, "w") as f:
        f.write("".join(k + "\n" for k in keys))
    os.chmod(ak, 0o644)
    return ak


def sshd_config(title, ip, port, key, ak, user, marker_name, inst_id, home, extra_env=()):
    """An sshd_config for one guest: its address, host key and authorized keys,
    one login user, every session marked `marker_name=inst_id` and started in `home`."""
    env = " ".join(["%s=%s" % (marker_name, inst_id), "HOME=" + home] + list(extra_env))
    return "\n".join([
        "# sshd of " + title,
        "Port %d" % port,
        "ListenAddress " + ip,
        "HostKey " + key,
        "PidFile none",
        "AuthorizedKeysFile " + ak,
        "AllowUsers " + user,
        "UsePAM no",
        "StrictModes no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "PermitRootLogin no",
        "PrintMotd no",
        "PrintLastLog no",
        "UseDNS no",
        "MaxStartups 100",
        "MaxSessions 100",
        "AcceptEnv *",
        # Marks every session process, so delete and halt find them even when detached.
        "SetEnv " + env,
        'ForceCommand cd "$HOME" || exit 125; if [ -n "${SSH_ORIGINAL_COMMAND+x}" ]; then '
        'c=$SSH_ORIGINAL_COMMAND; unset SSH_ORIGINAL_COMMAND; exec /bin/sh -c "$c"; fi; '
        'exec /bin/sh -l',
        "Subsystem sftp " + SFTP_SERVER,
        "LogLevel INFO",
    ]) + "\n"


def size_limits(vcpu=None, memory_mb=None):
    """The argv prefix that makes a guest look like a machine of that size to its
    sessions: `nproc` shows `vcpu` CPUs (at most this machine's), and no process
    can map more than `memory_mb` (RLIMIT_AS, which `ulimit -v` shows)."""
    prefix = []
    if vcpu:
        n = max(1, min(int(vcpu), os.cpu_count() or 1))
        prefix += ["taskset", "-c", "0" if n == 1 else "0-%d" % (n - 1)]
    if memory_mb:
        prefix += ["prlimit", "--as=%d" % (int(memory_mb) * 1024 * 1024)]
    return prefix


def start_sshd(inst_dir, vcpu=None, memory_mb=None):
    """Starts the guest's sshd on its sshd_config, within `size_limits` when a
    size is given; returns the Popen."""
    logf = open(os.path.join(inst_dir, "sshd.log"), "ab")
    try:
        return subprocess.Popen(
            size_limits(vcpu, memory_mb) + [SSHD, "-D", "-e", "-f", os.path.join(inst_dir, "sshd_config")],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, preexec_fn=die_with_parent)
    finally:
        logf.close()
