"""Syncthing's config.xml, set up for a benchmark: the one place that
turns off everything that is not the sync under test (discovery, relays,
NAT, usage and crash reporting, upgrades) and sets where it listens."""

import xml.etree.ElementTree as ET

QUIET_OPTIONS = dict(globalAnnounceEnabled="false", localAnnounceEnabled="false", relaysEnabled="false",
                     natEnabled="false", urAccepted="-1", urSeen="3", crashReportingEnabled="false",
                     autoUpgradeIntervalH="0", setLowPriority="false", announceLANAddresses="false")


def isolate(cfg, listen, **extra):
    """Edit the parsed config root `cfg` in place: listen on `listen`
    (e.g. "tcp://127.0.0.1:22000") only, QUIET_OPTIONS, then `extra`
    options (name=value strings)."""
    opts = cfg.find("options")
    for tag in ("listenAddress", "stunServer", "globalAnnounceServer"):
        for e in opts.findall(tag):
            opts.remove(e)
    ET.SubElement(opts, "listenAddress").text = listen
    for tag, val in {**QUIET_OPTIONS, **extra}.items():
        e = opts.find(tag)
        if e is None:
            e = ET.SubElement(opts, tag)
        e.text = val
