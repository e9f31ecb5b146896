package envtestkit

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mailfleet/mailfleet/relay/certs"
)

// CertManager issues Certificates in one namespace as cert-manager would,
// for the two issuer types a private CA needs: a self-signed Issuer signing
// a CA Certificate, and a CA Issuer signing from that CA's Secret (the
// chain config/samples declares). Its client needs a scheme with
// cert-manager's types.
type CertManager struct {
	Client    client.Client
	Namespace string
	// Wait bounds the wait for each Certificate to appear.
	Wait time.Duration
	cas  map[string]*certs.CA // by the name of the Secret holding the CA
}

// IssueAll issues the named Certificates, each once its issuer can sign:
// a CA Issuer's Certificates wait for its CA's own Certificate.
func (m *CertManager) IssueAll(ctx context.Context, names ...string) error {
	for len(names) > 0 {
		var waiting []string
		for _, name := range names {
			issued, err := m.issue(ctx, name)
			if err != nil {
				return err
			}
			if !issued {
				waiting = append(waiting, name)
			}
		}
		if len(waiting) == len(names) {
			return fmt.Errorf("certificates %v: no issuer can sign them", waiting)
		}
		names = waiting
	}
	return nil
}

// issue writes the Certificate's Secret and marks it Ready; false means its
// CA issuer's Secret has not been issued yet.
func (m *CertManager) issue(ctx context.Context, name string) (bool, error) {
	if m.cas == nil {
		m.cas = map[string]*certs.CA{}
	}
	cert := &certmanagerv1.Certificate{}
	key := client.ObjectKey{Namespace: m.Namespace, Name: name}
	deadline := time.Now().Add(m.Wait)
	for {
		err := m.Client.Get(ctx, key, cert)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return false, fmt.Errorf("certificate %s: %w", name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ref := cert.Spec.IssuerRef
	if (ref.Group != "" && ref.Group != "cert-manager.io") || (ref.Kind != "" && ref.Kind != "Issuer") {
		return false, fmt.Errorf("certificate %s: issuer %s %s/%s; only namespaced cert-manager Issuers are played", name, ref.Group, ref.Kind, ref.Name)
	}
	iss := &certmanagerv1.Issuer{}
	if err := m.Client.Get(ctx, client.ObjectKey{Namespace: m.Namespace, Name: ref.Name}, iss); err != nil {
		return false, fmt.Errorf("certificate %s: issuer: %w", name, err)
	}
	var certPEM, keyPEM []byte
	var ca *certs.CA
	switch {
	case iss.Spec.SelfSigned != nil && cert.Spec.IsCA:
		var err error
		if ca, err = certs.GenerateCA(cert.Spec.CommonName); err != nil {
			return false, fmt.Errorf("certificate %s: %w", name, err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(ca.Key)
		if err != nil {
			return false, fmt.Errorf("certificate %s: %w", name, err)
		}
		certPEM, keyPEM = ca.CertPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		m.cas[cert.Spec.SecretName] = ca
	case iss.Spec.CA != nil:
		if ca = m.cas[iss.Spec.CA.SecretName]; ca == nil {
			return false, nil
		}
		if len(cert.Spec.DNSNames) == 0 {
			return false, fmt.Errorf("certificate %s has no dnsNames", name)
		}
		var err error
		if certPEM, keyPEM, err = ca.Issue(cert.Spec.DNSNames, time.Hour); err != nil {
			return false, fmt.Errorf("certificate %s: %w", name, err)
		}
	default:
		return false, fmt.Errorf("certificate %s: issuer %s is neither self-signed (for a CA) nor a CA issuer", name, iss.Name)
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: cert.Spec.SecretName, Namespace: m.Namespace},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM, "ca.crt": ca.CertPEM},
	}
	if tmpl := cert.Spec.SecretTemplate; tmpl != nil {
		secret.Labels, secret.Annotations = tmpl.Labels, tmpl.Annotations
	}
	if err := m.Client.Create(ctx, secret); err != nil {
		return false, fmt.Errorf("certificate %s: create Secret: %w", name, err)
	}
	if err := MarkCertificateReady(ctx, m.Client, m.Namespace, name); err != nil {
		return false, err
	}
	return true, nil
}

// MarkCertificateReady sets the Certificate's Ready condition through the
// status subresource, as cert-manager does once it has written the
// Certificate's Secret.
func MarkCertificateReady(ctx context.Context, c client.Client, namespace, name string) error {
	cert := &certmanagerv1.Certificate{}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, cert); err != nil {
			return err
		}
		now := metav1.Now()
		cert.Status.Conditions = []certmanagerv1.CertificateCondition{{
			Type: certmanagerv1.CertificateConditionReady, Status: cmmeta.ConditionTrue,
			Reason: "Ready", Message: "Certificate is up to date and has not expired", LastTransitionTime: &now,
		}}
		return c.Status().Update(ctx, cert)
	})
	if err != nil {
		return fmt.Errorf("certificate %s: set Ready: %w", name, err)
	}
	return nil
}
