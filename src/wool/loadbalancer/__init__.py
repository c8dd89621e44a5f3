"""Client-side load balancing across a pool's workers."""

from __future__ import annotations

from wool.loadbalancer._roundrobin import LoadBalancerLike, RoundRobinLoadBalancer

__all__ = ["LoadBalancerLike", "RoundRobinLoadBalancer"]
