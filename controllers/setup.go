package controllers

import (
	"fmt"

	ctrl "sigs.k8s.io/controller-runtime"
)

// Setup registers every mailfleet controller with mgr.
func Setup(mgr ctrl.Manager, opts RenderOptions) error {
	setups := []struct {
		name  string
		setup func(ctrl.Manager) error
	}{
		{"smtprelay", (&RelayReconciler{Options: opts}).SetupWithManager},
		{"smtpaccount", (&AccountReconciler{}).SetupWithManager},
		{"smtplabel", (&LabelReconciler{}).SetupWithManager},
		// After the account controller, whose cache indexes it reads.
		{"credentials", (&CredentialsPublisher{}).SetupWithManager},
	}
	for _, s := range setups {
		if err := s.setup(mgr); err != nil {
			return fmt.Errorf("set up %s controller: %w", s.name, err)
		}
	}
	return nil
}
