"""Multi-node deployment on a plain Ray cluster (``fineserve deploy PLAN --ray ADDRESS``).

One ``NodeAgent`` actor per plan node, pinned to the Ray node that carries the custom resource
``fineserve_node_<name>``, runs that node's part of the plan with the single-host runtime
(MPS daemons, vLLM engines, the same supervision); the driver runs the gateway and watches the
agents. Ray is an optional dependency (``pip install 'fineserve[ray]'``): nothing in this
package imports it at module level except ``agent.py``, which only the driver imports.
See docs/ray.md.
"""
