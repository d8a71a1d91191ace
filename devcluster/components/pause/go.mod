// The real node's pod sandbox ("pause") program, ours: no registry is reachable, so the image containerd
// pins as its sandbox is built from this and imported. Standard library only.
module ferry.dev/devcluster/components/pause

go 1.26.0
