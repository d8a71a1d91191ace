// devcluster component "h2spec": the HTTP/2 conformance suite the runtime's gRPC transport is tested
// against (tests/runtime/test_h2spec.py). Pins one upstream module (see ferry_devcluster/components.py
// for why one module per upstream project). Bump with `go get -tool MODULE@VERSION` here; devcluster
// builds the binary into ${FERRY_CACHE}/bin/h2spec-<version>.
module ferry.dev/devcluster/components/h2spec

go 1.26.0

tool github.com/summerwind/h2spec/cmd/h2spec

require (
	github.com/fatih/color v1.19.0 // indirect
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/mattn/go-colorable v0.1.14 // indirect
	github.com/mattn/go-isatty v0.0.20 // indirect
	github.com/spf13/cobra v1.10.2 // indirect
	github.com/spf13/pflag v1.0.9 // indirect
	github.com/summerwind/h2spec v2.2.1+incompatible // indirect
	golang.org/x/net v0.63.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/text v0.44.0 // indirect
)
