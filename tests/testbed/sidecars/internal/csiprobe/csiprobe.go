// Package csiprobe holds what both stand-ins need from a CSI driver: a connection to its
// unix socket, its name, and its Probe answer.
package csiprobe

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Dial connects to a CSI endpoint given as a path or unix:// URL. The connection is lazy, so a
// driver that starts later is reached once it listens.
func Dial(address string) (*grpc.ClientConn, error) {
	if !strings.HasPrefix(address, "unix://") {
		address = "unix://" + address
	}
	return grpc.NewClient(address, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// DriverName asks the driver for its name, retrying until it answers or ctx ends: the registrar
// may start before the driver has opened its socket.
func DriverName(ctx context.Context, conn *grpc.ClientConn) (string, error) {
	identity := csi.NewIdentityClient(conn)
	for {
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := identity.GetPluginInfo(attempt, &csi.GetPluginInfoRequest{})
		cancel()
		if err == nil {
			if info.GetName() == "" {
				return "", fmt.Errorf("the driver returned an empty name from GetPluginInfo")
			}
			return info.GetName(), nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("GetPluginInfo: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(time.Second):
		}
	}
}

// Probe returns nil when the driver says it is ready. A driver that omits `ready` is ready,
// as the CSI spec says.
func Probe(ctx context.Context, conn *grpc.ClientConn) error {
	response, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
	if err != nil {
		return fmt.Errorf("probe failed: %w", err)
	}
	if ready := response.GetReady(); ready != nil && !ready.GetValue() {
		return fmt.Errorf("the driver answered Probe with ready=false")
	}
	return nil
}
