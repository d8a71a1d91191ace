// Command coredns is CoreDNS with the plugins of a kubeadm cluster's default Corefile only (kubernetes,
// forward, cache, errors, health, ready, loadbalance, log, loop, reload) and bind: the full build links every
// cloud provider's SDK, which this cluster never uses.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// the order in which the plugins handle a query, as in CoreDNS's plugin.cfg
var directives = []string{
	"reload", "bind", "health", "ready", "errors", "log", "loadbalance", "cache", "loop", "kubernetes", "forward",
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
