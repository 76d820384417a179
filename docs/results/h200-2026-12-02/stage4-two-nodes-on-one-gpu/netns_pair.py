"""Two network namespaces, n1 and n2, joined by a veth pair (10.77.0.1 <-> 10.77.0.2): two
"nodes" on one machine whose link can be cut. pyroute2, because the GPU image has no `ip`."""
from pyroute2 import IPRoute, NetNS, netns

for name in ("n1", "n2"):
    if name in netns.listnetns():
        netns.remove(name)
    netns.create(name)
with IPRoute() as ipr:
    ipr.link("add", ifname="veth-n1", kind="veth", peer="veth-n2")
    for name in ("n1", "n2"):
        ipr.link("set", index=ipr.link_lookup(ifname=f"veth-{name}")[0], net_ns_fd=name)
for i, name in enumerate(("n1", "n2"), start=1):
    with NetNS(name) as ns:
        index = ns.link_lookup(ifname=f"veth-{name}")[0]
        ns.addr("add", index=index, address=f"10.77.0.{i}", prefixlen=24)
        ns.link("set", index=index, state="up")
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
print("n1 10.77.0.1 <-> n2 10.77.0.2")
