// devcluster component "prometheus-operator": pins one upstream module (see ferry_devcluster/components.py for why one
// module per upstream project). Bump with `go get -tool MODULE@VERSION` here (plus, for kubernetes, the
// k8s.io/* replace lines); devcluster builds the binaries into ${FERRY_CACHE}/bin/<name>-<version>.
module ferry.dev/devcluster/components/prometheus-operator

go 1.26.0

require github.com/prometheus-operator/prometheus-operator v0.94.0
