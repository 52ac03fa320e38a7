"""Client-side load balancing: pick an endpoint per call, learn from the outcome."""

from mesh.balancer.base import Balancer, Done, Outcome, Picked
from mesh.balancer.outlier import OutlierBalancer, OutlierDetector, OutlierPolicy
from mesh.balancer.p2c import PowerOfTwoChoices
from mesh.balancer.round_robin import RoundRobin
from mesh.balancer.subset import subset

__all__ = [
    "Balancer",
    "Done",
    "Outcome",
    "OutlierBalancer",
    "OutlierDetector",
    "OutlierPolicy",
    "Picked",
    "PowerOfTwoChoices",
    "RoundRobin",
    "subset",
]
