package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap/zapcore"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/mailfleet/mailfleet/controllers"
)

type operatorOptions struct {
	metricsAddr      string
	probeAddr        string
	leaderElect      bool
	leaderElectionNS string
	relayImage       string
	allowedImages    []string
	logLevel         string
	shutdownTimeout  time.Duration
}

func operatorCommand() *cobra.Command {
	var o operatorOptions
	cmd := &cobra.Command{
		Use:   "operator",
		Short: "Run the controller manager for SmtpRelay, SmtpAccount and SmtpLabel",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runOperator(o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", "address of the Prometheus metrics endpoint")
	f.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	f.BoolVar(&o.leaderElect, "leader-elect", true, "elect a leader so only one replica reconciles")
	f.StringVar(&o.leaderElectionNS, "leader-election-namespace", "", "namespace of the leader election Lease (default: the pod's)")
	f.StringVar(&o.relayImage, "relay-image", os.Getenv("MAILFLEET_IMAGE"), "image of relay pods when an SmtpRelay sets none (default $MAILFLEET_IMAGE)")
	f.StringSliceVar(&o.allowedImages, "relay-allowed-images", nil, "images an SmtpRelay may name in spec.image besides --relay-image: exact references, or prefixes ending in /, : or @")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info or error")
	f.DurationVar(&o.shutdownTimeout, "graceful-shutdown-timeout", 30*time.Second, "how long running reconciles may take to finish on shutdown")
	return cmd
}

func runOperator(o operatorOptions) error {
	var level zapcore.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("log level %q: %w", o.logLevel, err)
	}
	ctrl.SetLogger(zap.New(zap.Level(level)))
	if o.relayImage == "" {
		return fmt.Errorf("--relay-image (or $MAILFLEET_IMAGE) is required: relay pods run the operator's image")
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("kubernetes client config: %w", err)
	}
	mgr, err := ctrl.NewManager(cfg, managerOptions(o))
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	if err := controllers.Setup(mgr, controllers.RenderOptions{Image: o.relayImage, AllowedImages: o.allowedImages}); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
		return fmt.Errorf("ready check: %w", err)
	}
	ctrl.Log.Info("starting operator", "version", version, "relayImage", o.relayImage)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		return fmt.Errorf("run manager: %w", err)
	}
	return nil
}

func managerOptions(o operatorOptions) ctrl.Options {
	shutdown := o.shutdownTimeout
	return ctrl.Options{
		Scheme:                        controllers.Scheme(),
		Metrics:                       metricsserver.Options{BindAddress: o.metricsAddr},
		HealthProbeBindAddress:        o.probeAddr,
		LeaderElection:                o.leaderElect,
		LeaderElectionID:              "mailfleet-operator.mailfleet.io",
		LeaderElectionNamespace:       o.leaderElectionNS,
		LeaderElectionReleaseOnCancel: true,
		GracefulShutdownTimeout:       &shutdown,
		// The main cache holds Secrets as metadata only (the controllers
		// watch them that way and read data live); managed fields are
		// dropped from everything, since nothing reads them.
		Cache: cache.Options{DefaultTransform: cache.TransformStripManagedFields()},
	}
}
