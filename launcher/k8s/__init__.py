"""Kubernetes objects of an ldisc launch, built as plain dicts by functions (never string templates).

``render(entry, cfg, overrides)`` in :mod:`launcher.k8s.render` is the one entry; the modules below own
one part each: :mod:`.common` (names, labels, ConfigMap, PodMonitor, RBAC), :mod:`.pod` (containers and
pod specs with the security defaults), :mod:`.pretrain`, :mod:`.ingest`, :mod:`.eval`.
"""
