package controllers

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/controllers/dnscheck"
	"github.com/mailfleet/mailfleet/controllers/render"
	"github.com/mailfleet/mailfleet/internal/dnstest"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
	"github.com/mailfleet/mailfleet/relay/credentials"
)

// fakeClock is a clock a test moves.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// domainRig runs the account controller, the publisher and the domain
// controller against a DNS server on loopback, keys in a namespace of
// their own.
type domainRig struct {
	dns      *dnstest.Server
	keyNS    string
	clock    *fakeClock
	platform string
	tenant   string
}

// smallKeys are 1024-bit RSA keys: the race detector makes 2048-bit ones
// take seconds, and the size changes nothing the tests look at.
func smallKeys(alg string) (crypto.Signer, error) {
	if alg == algRSA {
		return rsa.GenerateKey(rand.Reader, 1024)
	}
	return generateKey(alg)
}

func startDomains(t *testing.T, externalDNS ...string) *domainRig {
	t.Helper()
	r := &domainRig{dns: dnstest.Start(t), keyNS: env.Namespace(t, nil), clock: &fakeClock{now: time.Now()},
		platform: env.Namespace(t, nil), tenant: env.Namespace(t, nil)}
	env.StartManager(t, func(mgr ctrl.Manager) error {
		if err := IndexFields(context.Background(), mgr); err != nil {
			return err
		}
		secrets, err := NewOwnedSecrets(mgr)
		if err != nil {
			return err
		}
		for _, setup := range []func(ctrl.Manager) error{
			(&AccountReconciler{Secrets: secrets, DomainKeyNamespace: r.keyNS}).SetupWithManager,
			(&LabelReconciler{}).SetupWithManager,
			(&CredentialsPublisher{Secrets: secrets, DomainKeyNamespace: r.keyNS, MinInterval: time.Millisecond}).SetupWithManager,
			(&DomainReconciler{Secrets: secrets, DNS: &dnscheck.Servers{Addrs: []string{r.dns.Addr}, Timeout: time.Second},
				KeyNamespace: r.keyNS, SPFInclude: "_spf.mail.example.net", Now: r.clock.Now, GenerateKey: smallKeys, ExternalDNSDomains: externalDNS,
				RecheckPending: 100 * time.Millisecond, RecheckVerified: 300 * time.Millisecond}).SetupWithManager,
		} {
			if err := setup(mgr); err != nil {
				return err
			}
		}
		return nil
	})
	env.CreateRelay(t, r.platform, "mx", func(rl *v1.SmtpRelay) { rl.Spec.Accounts.Namespaces.From = v1.NamespacesFromAll })
	return r
}

func (r *domainRig) createDomain(t *testing.T, name, domain string, dkim v1.DomainDKIM) *v1.SmtpDomain {
	t.Helper()
	d := &v1.SmtpDomain{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: r.tenant}, Spec: v1.SmtpDomainSpec{Domain: domain, DKIM: dkim}}
	if err := env.Client.Create(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	return d
}

// waitDomain waits until the domain's status passes check.
func (r *domainRig) waitDomain(t *testing.T, name string, check func(*v1.SmtpDomain) error) *v1.SmtpDomain {
	t.Helper()
	d := &v1.SmtpDomain{}
	envtestkit.Eventually(t, 20*time.Second, func() error {
		if err := env.Get(d, r.tenant, name); err != nil {
			return err
		}
		return check(d)
	})
	return d
}

func verifiedIs(want metav1.ConditionStatus, reason string) func(*v1.SmtpDomain) error {
	return func(d *v1.SmtpDomain) error {
		c := meta.FindStatusCondition(d.Status.Conditions, v1.ConditionVerified)
		if c == nil || c.Status != want || c.Reason != reason {
			return fmt.Errorf("Verified %+v, want %s/%s", c, want, reason)
		}
		return nil
	}
}

// publish puts every required DKIM record the status lists into DNS.
func (r *domainRig) publish(d *v1.SmtpDomain) {
	for _, rec := range d.Status.Records {
		if rec.Required {
			r.dns.SetTXT(rec.Name, rec.Value)
		}
	}
}

// waitAccountSenders waits for the account's SenderDomainsVerified
// condition to have status want and a message containing mention.
func (r *domainRig) waitAccountSenders(t *testing.T, name string, want metav1.ConditionStatus, mention string) {
	t.Helper()
	envtestkit.Eventually(t, 15*time.Second, func() error {
		var a v1.SmtpAccount
		if err := env.Get(&a, r.tenant, name); err != nil {
			return err
		}
		c := meta.FindStatusCondition(a.Status.Conditions, v1.ConditionSenderDomainsVerified)
		if c == nil || c.Status != want || !strings.Contains(c.Message, mention) {
			return fmt.Errorf("SenderDomainsVerified %+v, want %s mentioning %q", c, want, mention)
		}
		return nil
	})
}

// login authenticates as the account through the relay's view of its
// shards.
func login(t *testing.T, v *credentials.Verifier, user, key string) credentials.Identity {
	t.Helper()
	var id credentials.Identity
	envtestkit.Eventually(t, 10*time.Second, func() error {
		var err error
		id, err = v.Authenticate(user, key)
		return err
	})
	return id
}

// eventuallyID waits until the relay's view of the account passes check.
func eventuallyID(t *testing.T, v *credentials.Verifier, user, key string, check func(credentials.Identity) error) {
	t.Helper()
	envtestkit.Eventually(t, 15*time.Second, func() error {
		id, err := v.Authenticate(user, key)
		if err != nil {
			return err
		}
		return check(id)
	})
}

func sends(from ...string) func(credentials.Identity) error {
	return func(id credentials.Identity) error {
		for _, f := range from {
			if !id.SenderDomainAllowed(f) {
				return fmt.Errorf("may not send from %s (allowed %v, restricted %v)", f, id.AllowedSenderDomains, id.RestrictSenders)
			}
		}
		return nil
	}
}

func sendsNot(from ...string) func(credentials.Identity) error {
	return func(id credentials.Identity) error {
		for _, f := range from {
			if id.SenderDomainAllowed(f) {
				return fmt.Errorf("may send from %s (allowed %v)", f, id.AllowedSenderDomains)
			}
		}
		return nil
	}
}

// TestDomainVerifiedWhenRecordsAppear: an SmtpDomain says which records to
// publish and stays Pending (DKIMRecordMissing) until DNS shows them; then
// it is Verified, and its namespace's account may send from it and signs
// for it. A record withdrawn later takes both back; deleting the
// SmtpDomain deletes its keys.
func TestDomainVerifiedWhenRecordsAppear(t *testing.T) {
	r := startDomains(t)
	_, verifier := relayCredentials(t, r.platform, "mx")
	env.CreateAccount(t, r.tenant, "acme", r.platform, "mx", func(a *v1.SmtpAccount) {
		a.Spec.AllowedSenderDomains = []string{"acme.example", "*.acme.example", "bank.example"}
	})
	key := waitAccountKey(t, r.tenant, "acme-smtp-credentials")
	id := login(t, verifier, "acme", key)
	if id.SenderDomainAllowed("acme.example") || !id.RestrictSenders {
		t.Fatalf("an unverified domain is allowed: %+v", id.AllowedSenderDomains)
	}

	r.waitAccountSenders(t, "acme", metav1.ConditionFalse, "no SmtpDomain of namespace")
	r.createDomain(t, "acme", "acme.example", v1.DomainDKIM{})
	d := r.waitDomain(t, "acme", verifiedIs(metav1.ConditionFalse, v1.ReasonDKIMRecordMissing))
	if len(d.Status.Records) != 3 || d.Status.Records[0].Name != "mailfleet-1._domainkey.acme.example" ||
		d.Status.Records[1].Value != "v=spf1 include:_spf.mail.example.net ~all" || d.Status.Records[2].Name != "_dmarc.acme.example" {
		t.Fatalf("records %+v", d.Status.Records)
	}
	r.publish(d)
	r.dns.SetTXT("_dmarc.acme.example", "v=DMARC1; p=quarantine")
	d = r.waitDomain(t, "acme", verifiedIs(metav1.ConditionTrue, v1.ReasonVerified))
	if d.Status.Selector != "mailfleet-1" || d.Status.Records[2].State != v1.DNSRecordFound || d.Status.Records[1].State != v1.DNSRecordMissing {
		t.Fatalf("status %+v", d.Status)
	}
	eventuallyID(t, verifier, "acme", key, func(id credentials.Identity) error {
		if err := sends("acme.example", "news.acme.example")(id); err != nil {
			return err
		}
		if keys := id.DKIM.For("news.acme.example"); len(keys) != 1 || keys[0].Selector != "mailfleet-1" {
			return fmt.Errorf("signing keys %v", keys)
		}
		return sendsNot("bank.example")(id)
	})
	// The account says which of its domains it may not send from.
	r.waitAccountSenders(t, "acme", metav1.ConditionFalse, "allowedSenderDomains bank.example: no Verified SmtpDomain")

	r.dns.Remove("mailfleet-1._domainkey.acme.example")
	r.waitDomain(t, "acme", verifiedIs(metav1.ConditionFalse, v1.ReasonDKIMRecordMissing))
	eventuallyID(t, verifier, "acme", key, sendsNot("acme.example"))

	if err := env.Client.Delete(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	envtestkit.Eventually(t, 10*time.Second, func() error {
		err := env.Get(&corev1.Secret{}, r.keyNS, render.DomainKeySecretName(r.tenant, "acme"))
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("the key Secret of a deleted SmtpDomain: %v", err)
		}
		return nil
	})
}

// TestDomainLookupFailureKeepsVerified: a DNS outage (SERVFAIL) says so,
// and does not take a verified domain from its accounts.
func TestDomainLookupFailureKeepsVerified(t *testing.T) {
	r := startDomains(t)
	r.createDomain(t, "acme", "acme.example", v1.DomainDKIM{})
	d := r.waitDomain(t, "acme", verifiedIs(metav1.ConditionFalse, v1.ReasonDKIMRecordMissing))
	r.publish(d)
	r.waitDomain(t, "acme", verifiedIs(metav1.ConditionTrue, v1.ReasonVerified))
	r.dns.Fail("mailfleet-1._domainkey.acme.example", true)
	d = r.waitDomain(t, "acme", func(d *v1.SmtpDomain) error {
		if d.Status.Records[0].State != v1.DNSRecordUnknown {
			return fmt.Errorf("record state %s", d.Status.Records[0].State)
		}
		return nil
	})
	if !meta.IsStatusConditionTrue(d.Status.Conditions, v1.ConditionVerified) {
		t.Fatalf("a failed lookup unverified the domain: %+v", d.Status.Conditions)
	}
}

// TestDomainRotation: past rotateAfter a new selector is made and listed;
// signing switches to it once DNS shows it, the old one is kept (Retiring,
// both resolving) for the grace period, then deleted.
func TestDomainRotation(t *testing.T) {
	r := startDomains(t)
	_, verifier := relayCredentials(t, r.platform, "mx")
	env.CreateAccount(t, r.tenant, "acme", r.platform, "mx")
	key := waitAccountKey(t, r.tenant, "acme-smtp-credentials")
	r.createDomain(t, "acme", "acme.example", v1.DomainDKIM{Ed25519: true,
		RotateAfter: &metav1.Duration{Duration: 24 * time.Hour}, GracePeriod: &metav1.Duration{Duration: 2 * time.Hour}})
	d := r.waitDomain(t, "acme", verifiedIs(metav1.ConditionFalse, v1.ReasonDKIMRecordMissing))
	if len(d.Status.Keys) != 2 || d.Status.Keys[1].Selector != "mailfleet-1-ed" || d.Status.Keys[1].Algorithm != algEd25519 {
		t.Fatalf("keys %+v", d.Status.Keys)
	}
	r.publish(d)
	r.waitDomain(t, "acme", verifiedIs(metav1.ConditionTrue, v1.ReasonVerified))
	// An account that lists no domain sends from its namespace's verified ones.
	eventuallyID(t, verifier, "acme", key, func(id credentials.Identity) error {
		if len(id.DKIM.For("acme.example")) != 2 {
			return fmt.Errorf("want RSA and Ed25519 keys")
		}
		return sends("acme.example", "x.acme.example")(id)
	})
	r.waitAccountSenders(t, "acme", metav1.ConditionTrue, "acme.example")

	r.clock.Advance(25 * time.Hour)
	d = r.waitDomain(t, "acme", func(d *v1.SmtpDomain) error {
		if len(d.Status.Keys) != 4 || d.Status.Keys[2].Selector != "mailfleet-2" || d.Status.Keys[2].State != v1.DKIMKeyPending {
			return fmt.Errorf("keys %+v", d.Status.Keys)
		}
		return nil
	})
	if d.Status.Selector != "mailfleet-1" {
		t.Fatalf("signing moved before DNS shows the new key: %s", d.Status.Selector)
	}
	r.publish(d)
	d = r.waitDomain(t, "acme", func(d *v1.SmtpDomain) error {
		if d.Status.Selector != "mailfleet-2" || d.Status.Keys[0].State != v1.DKIMKeyRetiring || d.Status.Keys[0].RetireAt == nil {
			return fmt.Errorf("selector %s, keys %+v", d.Status.Selector, d.Status.Keys)
		}
		return nil
	})
	if d.Status.Records[0].Required || d.Status.Records[0].State != v1.DNSRecordFound || d.Status.Records[2].State != v1.DNSRecordFound {
		t.Fatalf("during grace both selectors resolve and the old one is no longer required: %+v", d.Status.Records)
	}
	eventuallyID(t, verifier, "acme", key, func(id credentials.Identity) error {
		if k := id.DKIM.For("acme.example"); len(k) != 2 || k[0].Selector != "mailfleet-2" {
			return fmt.Errorf("signing keys %v", k)
		}
		return nil
	})

	r.clock.Advance(3 * time.Hour)
	r.waitDomain(t, "acme", func(d *v1.SmtpDomain) error {
		if len(d.Status.Keys) != 2 || d.Status.Keys[0].Selector != "mailfleet-2" {
			return fmt.Errorf("keys %+v", d.Status.Keys)
		}
		return nil
	})
}

// TestAttackDomainStatusIsNotTrusted: a tenant that writes its
// SmtpDomain's status Verified for a domain it does not control (any role
// with */status may) gets nothing: the publisher reads the keys the
// operator keeps in its own namespace, which say what DNS showed.
func TestAttackDomainStatusIsNotTrusted(t *testing.T) {
	r := startDomains(t)
	_, verifier := relayCredentials(t, r.platform, "mx")
	env.CreateAccount(t, r.tenant, "acme", r.platform, "mx", func(a *v1.SmtpAccount) {
		a.Spec.AllowedSenderDomains = []string{"bank.example"}
	})
	key := waitAccountKey(t, r.tenant, "acme-smtp-credentials")
	d := r.createDomain(t, "bank", "bank.example", v1.DomainDKIM{})
	d = r.waitDomain(t, "bank", verifiedIs(metav1.ConditionFalse, v1.ReasonDKIMRecordMissing))
	forged := d.DeepCopy()
	meta.SetStatusCondition(&forged.Status.Conditions, metav1.Condition{Type: v1.ConditionVerified, Status: metav1.ConditionTrue, Reason: v1.ReasonVerified, Message: "trust me"})
	meta.SetStatusCondition(&forged.Status.Conditions, metav1.Condition{Type: v1.ConditionReady, Status: metav1.ConditionTrue, Reason: v1.ReasonVerified, Message: "trust me"})
	if err := env.Client.Status().Patch(context.Background(), forged, client.MergeFrom(d)); err != nil {
		t.Fatal(err)
	}
	// The account is republished (its namespace's domains changed) and
	// still may not send as the bank.
	time.Sleep(time.Second)
	eventuallyID(t, verifier, "acme", key, sendsNot("bank.example"))
	// Nor does a key Secret the tenant writes in its own namespace, with
	// the operator's labels and name, count.
	fake := render.DomainKeySecret(r.tenant, r.tenant, "bank", []byte(fmt.Sprintf(
		`{"namespace":%q,"name":"bank","uid":%q,"domain":"bank.example","verified":true,"keys":[]}`, r.tenant, d.UID)))
	if err := env.Client.Create(context.Background(), fake); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	eventuallyID(t, verifier, "acme", key, sendsNot("bank.example"))
}

// dnsEndpointCRD is external-dns's DNSEndpoint kind as far as the operator
// uses it: a namespaced object whose spec lists endpoints.
func dnsEndpointCRD() *apiextensionsv1.CustomResourceDefinition {
	preserve := true
	return &apiextensionsv1.CustomResourceDefinition{
		// A group under k8s.io needs this annotation; external-dns's own
		// CRD carries it too.
		ObjectMeta: metav1.ObjectMeta{Name: "dnsendpoints.externaldns.k8s.io",
			Annotations: map[string]string{"api-approved.kubernetes.io": "unapproved, experimental-only"}},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: "externaldns.k8s.io", Scope: apiextensionsv1.NamespaceScoped,
			Names: apiextensionsv1.CustomResourceDefinitionNames{Plural: "dnsendpoints", Singular: "dnsendpoint", Kind: "DNSEndpoint", ListKind: "DNSEndpointList"},
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{Name: "v1alpha1", Served: true, Storage: true,
				Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
					Type: "object", XPreserveUnknownFields: &preserve}}}},
		},
	}
}

// TestDomainExternalDNS: with spec.externalDNS the operator writes the
// records into a DNSEndpoint once external-dns's CRD is there (and says it
// is missing until then), external-dns (played by the test) publishes
// them, and the domain is verified. A domain outside the platform's
// --external-dns-domains gets no DNSEndpoint: external-dns would publish
// it in any zone it manages, and the tenant would verify a domain it does
// not own.
func TestDomainExternalDNS(t *testing.T) {
	r := startDomains(t, "tenants.example")
	r.createDomain(t, "shop", "shop.tenants.example", v1.DomainDKIM{})
	r.createDomain(t, "bank", "bank.example", v1.DomainDKIM{})
	for _, name := range []string{"shop", "bank"} {
		d := &v1.SmtpDomain{}
		if err := env.Get(d, r.tenant, name); err != nil {
			t.Fatal(err)
		}
		env.UpdateSpec(t, d, func() { d.Spec.ExternalDNS = true })
	}
	r.waitDomain(t, "shop", verifiedIs(metav1.ConditionFalse, v1.ReasonExternalDNSMissing))
	r.waitDomain(t, "bank", verifiedIs(metav1.ConditionFalse, v1.ReasonExternalDNSNotAllowed))

	installCRD(t, dnsEndpointCRD())
	endpoint := &unstructured.Unstructured{}
	endpoint.SetGroupVersionKind(dnsEndpointKind)
	envtestkit.Eventually(t, 30*time.Second, func() error {
		if err := env.Get(endpoint, r.tenant, "shop-dkim"); err != nil {
			return err
		}
		// external-dns: publish what the endpoint lists.
		eps, _, _ := unstructured.NestedSlice(endpoint.Object, "spec", "endpoints")
		for _, e := range eps {
			e := e.(map[string]any)
			r.dns.SetTXT(e["dnsName"].(string), e["targets"].([]any)[0].(string))
		}
		return nil
	})
	d := r.waitDomain(t, "shop", verifiedIs(metav1.ConditionTrue, v1.ReasonVerified))
	if d.Status.DNSEndpoint != "shop-dkim" || metav1.GetControllerOf(endpoint).Name != "shop" {
		t.Fatalf("status.dnsEndpoint %q, owner %v", d.Status.DNSEndpoint, metav1.GetControllerOf(endpoint))
	}
	if err := env.Get(&unstructured.Unstructured{Object: map[string]any{"apiVersion": "externaldns.k8s.io/v1alpha1", "kind": "DNSEndpoint"}}, r.tenant, "bank-dkim"); !apierrors.IsNotFound(err) {
		t.Fatalf("a DNSEndpoint for a domain outside --external-dns-domains: %v", err)
	}
	r.waitDomain(t, "bank", verifiedIs(metav1.ConditionFalse, v1.ReasonExternalDNSNotAllowed))
}

// installCRD creates crd and waits until it is served; it is deleted when
// the test ends, so that a later test starts without it.
func installCRD(t *testing.T, crd *apiextensionsv1.CustomResourceDefinition) {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := apiextensionsv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(env.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Create(ctx, crd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Delete(ctx, crd)
		envtestkit.Eventually(t, 30*time.Second, func() error {
			if err := c.Get(ctx, client.ObjectKeyFromObject(crd), crd); !apierrors.IsNotFound(err) {
				return fmt.Errorf("CRD %s still there: %v", crd.Name, err)
			}
			return nil
		})
	})
	envtestkit.Eventually(t, 30*time.Second, func() error {
		if err := c.Get(ctx, client.ObjectKeyFromObject(crd), crd); err != nil {
			return err
		}
		for _, cond := range crd.Status.Conditions {
			if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("CRD %s not established", crd.Name)
	})
}
