"""Client-side load balancing across a pool's workers."""

from __future__ import annotations

from wool.loadbalancer._hint import hint
from wool.loadbalancer._protocol import CallInfo, Candidate, LoadBalancerLike
from wool.loadbalancer._roundrobin import LeastLoadedLoadBalancer, RoundRobinLoadBalancer

__all__ = [
    "CallInfo",
    "Candidate",
    "LeastLoadedLoadBalancer",
    "LoadBalancerLike",
    "RoundRobinLoadBalancer",
    "hint",
]
