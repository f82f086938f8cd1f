// testbed-livenessprobe serves /healthz as the result of a CSI Probe call, for the kubelet's
// liveness checks of a CSI driver's container. A test-bed stand-in: see ../../README.md.
package main

import (
	"context"
	"flag"
	"log"
	"net/http"
	"time"

	"cairn.dev/testbed-sidecars/internal/csiprobe"
)

func main() {
	csiAddress := flag.String("csi-address", "/run/csi/socket", "the driver's CSI socket")
	endpoint := flag.String("http-endpoint", ":9808", "address to serve /healthz on")
	timeout := flag.Duration("probe-timeout", 4*time.Second, "how long one Probe may take")
	flag.Parse()

	conn, err := csiprobe.Dial(*csiAddress)
	if err != nil {
		log.Fatalf("cannot use CSI address %s: %v", *csiAddress, err)
	}
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), *timeout)
		defer cancel()
		if err := csiprobe.Probe(ctx, conn); err != nil {
			log.Printf("healthz: %v", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Write([]byte("ok"))
	})
	log.Printf("serving /healthz on %s for the driver at %s", *endpoint, *csiAddress)
	log.Fatal(http.ListenAndServe(*endpoint, nil))
}
