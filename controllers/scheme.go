// Package controllers reconciles SmtpRelay, SmtpAccount and SmtpLabel into
// relay Deployments, Services, Certificates and credentials Secrets.
package controllers

import (
	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	mailfleetv1alpha1 "github.com/mailfleet/mailfleet/api/v1alpha1"
)

// Scheme returns a scheme with every type the operator reads or writes.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(certmanagerv1.AddToScheme(s))
	utilruntime.Must(mailfleetv1alpha1.AddToScheme(s))
	return s
}

// FieldManager is the server-side apply field manager of every object the
// operator writes.
const FieldManager = "mailfleet-operator"
