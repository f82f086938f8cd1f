// testbed-registrar registers a CSI driver's node plugin with the kubelet through the kubelet's
// plugin-registration API, the job node-driver-registrar does. A test-bed stand-in: see
// ../../README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	registration "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"cairn.dev/testbed-sidecars/internal/csiprobe"
)

// server answers the kubelet's two calls. The kubelet dials the registration socket when it
// appears in its plugins_registry directory, asks GetInfo, validates, then reports the outcome.
type server struct {
	registration.UnimplementedRegistrationServer
	driver   string
	endpoint string
	failures chan string
}

func (s *server) GetInfo(context.Context, *registration.InfoRequest) (*registration.PluginInfo, error) {
	log.Printf("kubelet asked for plugin info: %s at %s", s.driver, s.endpoint)
	return &registration.PluginInfo{
		Type:              registration.CSIPlugin,
		Name:              s.driver,
		Endpoint:          s.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (s *server) NotifyRegistrationStatus(
	_ context.Context, status *registration.RegistrationStatus,
) (*registration.RegistrationStatusResponse, error) {
	if status.PluginRegistered {
		log.Printf("kubelet registered %s", s.driver)
	} else {
		log.Printf("kubelet refused %s: %s", s.driver, status.Error)
		s.failures <- status.Error
	}
	return &registration.RegistrationStatusResponse{}, nil
}

func main() {
	csiAddress := flag.String("csi-address", "/run/csi/socket", "the driver's CSI socket, as this container sees it")
	kubeletPath := flag.String("kubelet-registration-path", "", "the driver's CSI socket, as the kubelet sees it")
	registrationDir := flag.String("plugin-registration-path", "/registration", "the kubelet's plugins_registry directory")
	endpoint := flag.String("http-endpoint", "", "address to serve /healthz on (empty: none)")
	flag.Parse()
	if *kubeletPath == "" {
		log.Fatal("--kubelet-registration-path is required: the kubelet dials the driver at that path")
	}

	conn, err := csiprobe.Dial(*csiAddress)
	if err != nil {
		log.Fatalf("cannot use CSI address %s: %v", *csiAddress, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	driver, err := csiprobe.DriverName(ctx, conn)
	cancel()
	if err != nil {
		log.Fatalf("cannot learn the driver's name from %s: %v", *csiAddress, err)
	}

	socket := filepath.Join(*registrationDir, fmt.Sprintf("%s-reg.sock", driver))
	// A socket left by an earlier run of this container would make Listen fail.
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Fatalf("cannot remove the stale registration socket %s: %v", socket, err)
	}
	listener, err := net.Listen("unix", socket)
	if err != nil {
		log.Fatalf("cannot listen on %s: %v", socket, err)
	}
	impl := &server{driver: driver, endpoint: *kubeletPath, failures: make(chan string, 1)}
	grpcServer := grpc.NewServer()
	registration.RegisterRegistrationServer(grpcServer, impl)
	go func() {
		if err := grpcServer.Serve(listener); err != nil {
			log.Fatalf("registration server stopped: %v", err)
		}
	}()
	log.Printf("registering %s with the kubelet through %s", driver, socket)

	if *endpoint != "" {
		// Healthy while the registration socket exists: a kubelet that wiped its plugin directory
		// leaves this failing, so the kubelet restarts the container and registration happens again.
		http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if _, err := os.Stat(socket); err != nil {
				http.Error(w, fmt.Sprintf("registration socket: %v", err), http.StatusInternalServerError)
				return
			}
			w.Write([]byte("ok"))
		})
		go func() { log.Fatal(http.ListenAndServe(*endpoint, nil)) }()
	}

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	select {
	case sig := <-signals:
		log.Printf("%s: removing %s", sig, socket)
		grpcServer.Stop()
		os.Remove(socket)
	case reason := <-impl.failures:
		// Exit so the kubelet restarts the container and the registration is tried again.
		grpcServer.Stop()
		os.Remove(socket)
		log.Fatalf("registration failed: %s", reason)
	}
}
