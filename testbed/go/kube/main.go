// Command kube is the testbed's multicall Kubernetes binary: kube-apiserver, kube-scheduler,
// kube-controller-manager, kubelet and kubectl in one executable, so their shared packages are compiled
// and shipped once. It picks the command from the name it was started as (a symlink such as
// bin/kubelet -> kube) or, when started as `kube`, from its first argument (`kube kubelet --config ...`).
//
// Built by testbed/build.py in a throwaway module that requires k8s.io/kubernetes at the pinned version;
// each command is the upstream cobra command, run exactly as its own main.go runs it.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	_ "time/tzdata" // CronJob time zones (kube-apiserver, kube-controller-manager)

	"github.com/spf13/cobra"
	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl's auth plugins
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	"k8s.io/component-base/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// sourceID is set by the build (-X main.sourceID=...): a digest of this file, so a changed source is rebuilt.
var sourceID = "unknown"

var commands = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kubelet":                 func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
}

func usage() {
	names := []string{"kubectl"}
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "usage: kube COMMAND [flags], or run it through a symlink named COMMAND\ncommands: %v\n", names)
}

func main() {
	name := filepath.Base(os.Args[0])
	if name == "kube" {
		if len(os.Args) < 2 {
			usage()
			os.Exit(2)
		}
		if os.Args[1] == "--version" {
			fmt.Printf("Kubernetes %s, source %s (multicall: kube-apiserver, kube-scheduler, "+
				"kube-controller-manager, kubelet, kubectl)\n", version.Get().GitVersion, sourceID)
			return
		}
		// `kube kubelet --flags`: the command sees itself as argv[0], as if started through its symlink.
		name = os.Args[1]
		os.Args = os.Args[1:]
	}
	if name == "kubectl" {
		logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) // nolint:errcheck
		command := kubectlcmd.NewDefaultKubectlCommand()
		if err := cli.RunNoErrOutput(command); err != nil {
			kubectlutil.CheckErr(err)
		}
		return
	}
	newCommand, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "kube: unknown command %q\n", name)
		usage()
		os.Exit(2)
	}
	os.Exit(cli.Run(newCommand()))
}
