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
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

func startDomains(t *testing.T) *domainRig {
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
				KeyNamespace: r.keyNS, SPFInclude: "_spf.mail.example.net", Now: r.clock.Now, GenerateKey: smallKeys,
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
