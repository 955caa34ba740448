#!/usr/bin/python3
"""Exec a program under the seccomp filters a systemd unit would install.

    seccomp_exec.py SYSCALLS_FILE FAMILIES ACTION MDWE -- PROGRAM ARGS...

SYSCALLS_FILE: the allowed system calls, one name a line (tests/deploy.rs
expands the unit's SystemCallFilter= groups with `systemd-analyze
syscall-filter`). Any other call gets ACTION: "kill" (the process dies of
SIGSYS: the strictest reading) or an errno number (SystemCallErrorNumber=).
FAMILIES: comma-separated address family numbers socket() may use
(RestrictAddressFamilies=); any other family fails with EAFNOSUPPORT, as
under systemd. MDWE "yes": memory both writable and executable is refused
with EPERM the way systemd does it (MemoryDenyWriteExecute=). The filters are loaded with no_new_privs (NoNewPrivileges=)
and survive the exec, so the program runs as it would in the unit.
Uses libseccomp (python3-seccomp), the library systemd itself uses.
"""
import errno
import os
import sys

import seccomp


PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000


def deny_write_execute(f):
    """systemd's MemoryDenyWriteExecute= rules (src/shared/seccomp-util.c)."""
    eperm = seccomp.ERRNO(errno.EPERM)
    wx = PROT_WRITE | PROT_EXEC
    f.add_rule(eperm, "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
    for call in ("mprotect", "pkey_mprotect"):
        f.add_rule(eperm, call,
                   seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC, PROT_EXEC))
    f.add_rule(eperm, "shmat",
               seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, SHM_EXEC))


def main():
    sep = sys.argv.index("--")
    syscalls_file, families, action, mdwe = sys.argv[1:sep]
    argv = sys.argv[sep + 1:]
    if action == "kill":
        default = seccomp.KILL_PROCESS
    else:
        default = seccomp.ERRNO(int(action))
    allow = seccomp.SyscallFilter(defaction=default)
    with open(syscalls_file) as f:
        names = [line.strip() for line in f if line.strip()]
    for name in names:
        try:
            allow.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError, OSError):
            # Named in systemd's table but not on this architecture
            # (systemd skips those too).
            pass
    # Stacked filters: the most restrictive verdict wins, so this one only
    # has to refuse socket() for the families not listed.
    fams = {int(x) for x in families.split(",")}
    restrict = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for fam in range(0, 64):
        if fam not in fams:
            restrict.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket",
                              seccomp.Arg(0, seccomp.EQ, fam))
    restrict.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket",
                      seccomp.Arg(0, seccomp.GE, 64))
    if mdwe == "yes":
        deny_write_execute(restrict)
    restrict.load()
    allow.load()
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
