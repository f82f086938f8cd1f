// testbed-pause is the pod sandbox's one process: it holds the pod's namespaces open, reaps
// orphans it inherits as PID 1, and exits at once on SIGTERM or SIGINT so pods stop quickly.
// The bed cannot pull the upstream pause image, so its sandbox image carries this instead.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
