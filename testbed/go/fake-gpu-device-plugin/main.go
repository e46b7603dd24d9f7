// Command fake-gpu-device-plugin is the testbed's FAKE GPU device plugin. It is NOT the NVIDIA device plugin
// and there is no GPU behind it: it registers with the real kubelet over the device plugin API (v1beta1)
// and advertises N fake `nvidia.com/gpu` devices, so that scheduling, the kubelet's device manager and its
// Allocate call are real. Allocate answers as the NVIDIA plugin's default "envvar" strategy does
// (NVIDIA_VISIBLE_DEVICES=<ids>) and injects NO device node, mount or CDI device. A pod that gets such a
// "GPU" therefore runs without any /dev/nvidia*, and the suite's probe fails at the driver layer for that
// real reason, exactly as on a cluster whose pods run without the NVIDIA container runtime.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	api "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// sourceID and kubeVersion are set by the build (-X), so that `--version` changes with the source.
var (
	sourceID    = "unknown"
	kubeVersion = "unknown"
)

type plugin struct {
	api.UnimplementedDevicePluginServer
	devices []*api.Device
}

func (p *plugin) GetDevicePluginOptions(context.Context, *api.Empty) (*api.DevicePluginOptions, error) {
	return &api.DevicePluginOptions{}, nil
}

// ListAndWatch sends the (fixed, always healthy) device list once and keeps the stream open.
func (p *plugin) ListAndWatch(_ *api.Empty, stream grpc.ServerStreamingServer[api.ListAndWatchResponse]) error {
	if err := stream.Send(&api.ListAndWatchResponse{Devices: p.devices}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

// Allocate names the fake devices in NVIDIA_VISIBLE_DEVICES and injects nothing else (no device node).
func (p *plugin) Allocate(_ context.Context, req *api.AllocateRequest) (*api.AllocateResponse, error) {
	resp := &api.AllocateResponse{}
	for _, c := range req.ContainerRequests {
		log.Printf("Allocate %v (fake: no device node injected)", c.DevicesIds)
		resp.ContainerResponses = append(resp.ContainerResponses, &api.ContainerAllocateResponse{
			Envs: map[string]string{"NVIDIA_VISIBLE_DEVICES": strings.Join(c.DevicesIds, ",")},
		})
	}
	return resp, nil
}

func (p *plugin) GetPreferredAllocation(context.Context, *api.PreferredAllocationRequest) (*api.PreferredAllocationResponse, error) {
	return &api.PreferredAllocationResponse{}, nil
}

func (p *plugin) PreStartContainer(context.Context, *api.PreStartContainerRequest) (*api.PreStartContainerResponse, error) {
	return &api.PreStartContainerResponse{}, nil
}

// serve listens on our socket and registers with the kubelet; it returns the server to stop later.
func serve(p *plugin, dir, socket, resource string) (*grpc.Server, error) {
	path := filepath.Join(dir, socket)
	_ = os.Remove(path)
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer()
	api.RegisterDevicePluginServer(srv, p)
	go func() { _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "kubelet.sock"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		srv.Stop()
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = api.NewRegistrationClient(conn).Register(ctx, &api.RegisterRequest{
		Version: api.Version, Endpoint: socket, ResourceName: resource,
	})
	if err != nil {
		srv.Stop()
		return nil, fmt.Errorf("register with the kubelet: %w", err)
	}
	return srv, nil
}

func main() {
	count := flag.Int("devices", 8, "how many fake devices to advertise")
	resource := flag.String("resource", "nvidia.com/gpu", "extended resource name")
	dir := flag.String("socket-dir", api.DevicePluginPath, "the kubelet's device plugin directory")
	socket := flag.String("socket", "testbed-fake-gpu.sock", "this plugin's socket name in --socket-dir")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Printf("fake-gpu-device-plugin for Kubernetes %s, source %s (FAKE devices, no GPU)\n", kubeVersion, sourceID)
		return
	}
	p := &plugin{}
	for i := 0; i < *count; i++ {
		p.devices = append(p.devices, &api.Device{ID: fmt.Sprintf("testbed-fake-gpu-%d", i), Health: api.Healthy})
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	var srv *grpc.Server
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		// (Re-)register whenever our socket is gone: the kubelet removes plugin sockets when it restarts.
		if _, err := os.Stat(filepath.Join(*dir, *socket)); srv == nil || err != nil {
			if srv != nil {
				srv.Stop()
				srv = nil
			}
			var err error
			if srv, err = serve(p, *dir, *socket, *resource); err != nil {
				log.Printf("not registered yet: %v", err)
			} else {
				log.Printf("registered %d FAKE %s devices with the kubelet (socket %s)", *count, *resource, *socket)
			}
		}
		select {
		case <-stop:
			if srv != nil {
				srv.Stop()
			}
			_ = os.Remove(filepath.Join(*dir, *socket))
			return
		case <-tick.C:
		}
	}
}
