"""What ``ldisc-launch status`` reports, derived from the objects the API server returns (plain dicts):
each workload's phase from its conditions, each pod's phase, restarts and reason, the job's phase."""
from __future__ import annotations

from dataclasses import dataclass, field

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
_SUCCEEDED = {"Complete", "Succeeded", "SuccessCriteriaMet"}
_FAILED = {"Failed", "FailureTarget"}
_RUNNING = {"Running", "Restarting"}
_RAY_STATUS = {"PENDING": "Pending", "RUNNING": "Running", "SUCCEEDED": "Succeeded", "FAILED": "Failed",
               "STOPPED": "Failed"}


@dataclass
class Condition:
    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass
class Workload:
    kind: str
    name: str
    phase: str
    conditions: list[Condition] = field(default_factory=list)
    detail: str = ""


@dataclass
class PodInfo:
    name: str
    phase: str
    restarts: int = 0
    reason: str = ""        # e.g. CrashLoopBackOff, OOMKilled, ImagePullBackOff
    node: str = ""


@dataclass
class JobStatus:
    name: str
    namespace: str
    phase: str
    workloads: list[Workload] = field(default_factory=list)
    pods: list[PodInfo] = field(default_factory=list)
    checkpoint_step: int | None = None
    checkpoint_source: str = ""

    @property
    def restarts(self) -> int:
        return sum(p.restarts for p in self.pods)

    def render(self) -> str:
        out = [f"{self.name}  namespace={self.namespace}  phase={self.phase}"]
        for w in self.workloads:
            out.append(f"  {w.kind}/{w.name}  {w.phase}" + (f"  ({w.detail})" if w.detail else ""))
            for c in w.conditions:
                why = ": ".join(x for x in (c.reason, c.message) if x)
                out.append(f"    {c.type}={c.status}" + (f"  {why}" if why else ""))
        out.append(f"  pods: {len(self.pods)}  restarts: {self.restarts}")
        for p in self.pods:
            extra = "".join(f"  {k}={v}" for k, v in (("reason", p.reason), ("node", p.node)) if v)
            out.append(f"    {p.name}  {p.phase}  restarts={p.restarts}{extra}")
        step = "unknown" if self.checkpoint_step is None else f"step {self.checkpoint_step}"
        out.append(f"  checkpoint: {step}" + (f"  ({self.checkpoint_source})" if self.checkpoint_source else ""))
        return "\n".join(out)


def conditions(obj: dict) -> list[Condition]:
    return [Condition(c.get("type", ""), str(c.get("status", "")), c.get("reason", "") or "",
                      c.get("message", "") or "") for c in (obj.get("status") or {}).get("conditions") or []]


def workload_status(kind: str, obj: dict) -> Workload:
    """Phase and conditions of one Job, CronJob, PyTorchJob, TrainJob or RayJob (docs/launch.md)."""
    status = obj.get("status") or {}
    conds = conditions(obj)
    true = {c.type for c in conds if c.status == "True"}
    detail = ""
    if true & _FAILED:
        phase = "Failed"
    elif true & _SUCCEEDED:
        phase = "Succeeded"
    elif true & _RUNNING:
        phase = "Running"
    else:
        phase = "Pending"
    if kind == "Job":
        detail = f"active={status.get('active', 0)} succeeded={status.get('succeeded', 0)} failed={status.get('failed', 0)}"
        if phase == "Pending" and status.get("active"):
            phase = "Running"
    elif kind == "CronJob":
        active = len(status.get("active") or [])
        detail = f"schedule={obj.get('spec', {}).get('schedule')} active={active} last={status.get('lastScheduleTime')}"
        phase = "Running" if active else ("Succeeded" if status.get("lastSuccessfulTime") else "Pending")
    elif kind == "RayJob" and status.get("jobStatus"):
        phase = _RAY_STATUS.get(status["jobStatus"], phase)
        detail = f"jobStatus={status['jobStatus']} deployment={status.get('jobDeploymentStatus', '')}"
        if status.get("message") or status.get("reason"):
            conds.append(Condition("RayJob", status["jobStatus"], status.get("reason", ""), status.get("message", "")))
    return Workload(kind, obj["metadata"]["name"], phase, conds, detail)


def pod_info(pod: dict) -> PodInfo:
    status = pod.get("status") or {}
    statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    reason = status.get("reason", "") or ""
    for cs in statuses:
        state = cs.get("state") or {}
        waiting = (state.get("waiting") or {}).get("reason")
        last = ((cs.get("lastState") or {}).get("terminated") or {}).get("reason")
        reason = reason or waiting or last or ""
    return PodInfo(pod["metadata"]["name"], status.get("phase", "Unknown"),
                   sum(int(cs.get("restartCount", 0)) for cs in statuses), reason,
                   (pod.get("spec") or {}).get("nodeName", "") or "")


def overall_phase(workloads: list[Workload], pods: list[PodInfo]) -> str:
    phases = {w.phase for w in workloads}
    if "Failed" in phases:
        return "Failed"
    if "Running" in phases or any(p.phase == "Running" for p in pods):
        return "Running"
    if phases and phases <= {"Succeeded"}:
        return "Succeeded"
    return "Pending" if phases or pods else "Unknown"
