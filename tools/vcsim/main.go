// Command vcsim runs govmomi's vCenter simulator for pacsinfra's tests and benchmarks.
//
// Debian ships the simulator library (golang-github-vmware-govmomi-dev) but no
// vcsim command; build.sh compiles this file against it. On start it prints one
// line, "VCSIM_URL=https://user:pass@host:port/sdk", then serves until killed.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	_ "github.com/vmware/govmomi/pbm/simulator" // registers the /pbm endpoint
	"github.com/vmware/govmomi/simulator"
)

func main() {
	model := simulator.VPX()
	flag.IntVar(&model.Datacenter, "dc", 1, "number of datacenters")
	flag.IntVar(&model.Cluster, "cluster", 1, "clusters per datacenter")
	flag.IntVar(&model.ClusterHost, "host", 3, "hosts per cluster")
	flag.IntVar(&model.Host, "standalone-host", 0, "standalone hosts per datacenter")
	flag.IntVar(&model.Machine, "vm", 2, "virtual machines per resource pool")
	flag.IntVar(&model.Portgroup, "pg", 1, "distributed port groups per datacenter")
	flag.IntVar(&model.Datastore, "ds", 1, "datastores")
	listen := flag.String("l", "127.0.0.1:0", "listen address")
	cert := flag.String("tlscert", "", "PEM certificate (default: the built-in test certificate)")
	key := flag.String("tlskey", "", "PEM key for -tlscert")
	flag.IntVar(&model.DelayConfig.Delay, "delay", 0, "milliseconds to delay every SOAP call (vCenter latency)")
	methodDelay := flag.String("method-delay", "", "per-method extra delay, e.g. CreateVM_Task=200,PowerOnVM_Task=50")
	user := flag.String("username", "user", "login user")
	pass := flag.String("password", "pass", "login password")
	flag.Parse()
	if *methodDelay != "" {
		model.DelayConfig.MethodDelay = map[string]int{}
		for _, item := range strings.Split(*methodDelay, ",") {
			name, ms, ok := strings.Cut(item, "=")
			n, err := strconv.Atoi(ms)
			if !ok || err != nil {
				log.Fatalf("bad -method-delay entry %q (want Method=ms)", item)
			}
			model.DelayConfig.MethodDelay[name] = n
		}
	}

	defer model.Remove()
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	model.Service.RegisterEndpoints = true
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, *pass)}
	model.Service.TLS = new(tls.Config)
	if *cert != "" {
		pair, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			log.Fatal(err)
		}
		model.Service.TLS.Certificates = []tls.Certificate{pair}
	}

	s := model.Service.NewServer()
	fmt.Printf("VCSIM_URL=%s\n", s.URL)
	os.Stdout.Sync()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	s.Close()
}
