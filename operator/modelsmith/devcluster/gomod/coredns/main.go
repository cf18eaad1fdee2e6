// A CoreDNS with only the plugins the dev cluster's DNS needs: it answers for the
// cluster's own names and nothing else. No forward plugin on purpose: pods must never
// reach the machine's resolver. bind is linked because without it CoreDNS listens on
// every interface, and the dev cluster listens on loopback only. The full coredns
// command links every plugin (and the cloud SDKs of route53, azure and clouddns);
// this one stays small.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order CoreDNS's own plugin.cfg gives these plugins: a request passes through
// them top to bottom.
var directives = []string{
	"bind",
	"ready",
	"health",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"kubernetes",
}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
