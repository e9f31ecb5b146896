package controllers

import (
	"maps"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// testAccountObject and testRelayObject are in-memory fixtures for render
// tests; envtest tests build theirs with accountIn and relayIn.
func testAccountObject() *v1.SmtpAccount {
	return &v1.SmtpAccount{
		ObjectMeta: metav1.ObjectMeta{Name: "shop", Namespace: "tenant", UID: "uid-1"},
		Spec:       v1.SmtpAccountSpec{RelayRef: v1.RelayReference{Name: "mx", Namespace: "platform"}},
	}
}

func testRelayObject() *v1.SmtpRelay {
	return &v1.SmtpRelay{ObjectMeta: metav1.ObjectMeta{Name: "mx", Namespace: "platform"}}
}

func TestAccountSubmissionPort(t *testing.T) {
	l := func(port int32, tls v1.ListenerTLS) v1.RelayListener {
		return v1.RelayListener{Name: "p", Port: port, TLS: tls}
	}
	tests := []struct {
		name      string
		listeners []v1.RelayListener
		want      int32
	}{
		{"relay defaults", nil, 587},
		{"587 preferred over an earlier STARTTLS port", []v1.RelayListener{l(25, v1.ListenerStartTLS), l(587, v1.ListenerStartTLS)}, 587},
		{"first STARTTLS listener", []v1.RelayListener{l(465, v1.ListenerImplicit), l(2525, v1.ListenerStartTLS), l(25, v1.ListenerStartTLS)}, 2525},
		{"TLS mode not yet defaulted is STARTTLS", []v1.RelayListener{l(465, v1.ListenerImplicit), l(2600, "")}, 2600},
		{"implicit TLS only", []v1.RelayListener{l(465, v1.ListenerImplicit)}, 465},
		{"never the HTTP API's port", []v1.RelayListener{{Name: "api", Port: 8443, Kind: v1.ListenerHTTP, TLS: v1.ListenerStartTLS}, l(465, v1.ListenerImplicit)}, 465},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := testRelayObject()
			r.Spec.Listeners = tt.listeners
			if got := render.SubmissionPort(r); got != tt.want {
				t.Errorf("render.SubmissionPort = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestAccountRenderSecret(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	acc := testAccountObject()
	acc.Spec.APIUser = "acme"
	acc.Spec.SecretTemplate = &v1.SecretTemplate{
		Labels: map[string]v1.LabelValue{"team": "shop", render.LabelAppInstance: "argo-app", render.LabelAccount: "forged"},
		Annotations: map[string]string{"reloader.stakater.com/match": "true",
			render.AnnotationPreviousKeyExpiresAt: "forged"},
	}
	relay := testRelayObject()
	relay.Status.Endpoint = "mx.platform.svc.cluster.local"
	s := render.CredentialsSecret(render.CredentialsInput{Account: acc, Relay: relay, LabelIDs: []string{"1001", "news"},
		Key: render.KeyState{Key: "k", IssuedAt: now}})

	if s.Name != "shop-smtp-credentials" || s.Namespace != "tenant" || s.Type != "servicebinding.io/smtp" {
		t.Errorf("name/namespace/type: %s/%s %s", s.Namespace, s.Name, s.Type)
	}
	wantData := map[string]string{
		"type": "smtp", "provider": "mailfleet", "host": "mx.platform.svc.cluster.local", "port": "587",
		"username": "acme", "password": "k", "username-1001": "acme#1001", "username-news": "acme#news",
	}
	gotData := map[string]string{}
	for k, v := range s.Data {
		gotData[k] = string(v)
	}
	if !maps.Equal(gotData, wantData) {
		t.Errorf("data = %v\nwant  %v", gotData, wantData)
	}
	wantLabels := map[string]string{"team": "shop", render.LabelManagedBy: render.ManagedByValue, render.LabelAccount: "shop"}
	if !maps.Equal(s.Labels, wantLabels) {
		t.Errorf("labels = %v, want %v", s.Labels, wantLabels)
	}
	wantAnn := map[string]string{"reloader.stakater.com/match": "true", render.AnnotationKeyIssuedAt: "2026-03-01T12:00:00Z"}
	if !maps.Equal(s.Annotations, wantAnn) {
		t.Errorf("annotations = %v, want %v", s.Annotations, wantAnn)
	}
	if len(s.OwnerReferences) != 0 {
		t.Errorf("owner references = %+v; a retained Secret (the default) has none", s.OwnerReferences)
	}
	acc.Spec.SecretRetention = v1.SecretRetentionDelete
	owned := render.CredentialsSecret(render.CredentialsInput{Account: acc, Relay: relay, Key: render.KeyState{Key: "k", IssuedAt: now}})
	if len(owned.OwnerReferences) != 1 || !*owned.OwnerReferences[0].Controller || owned.OwnerReferences[0].UID != "uid-1" ||
		owned.OwnerReferences[0].Kind != "SmtpAccount" || owned.OwnerReferences[0].APIVersion != "mailfleet.io/v1alpha1" {
		t.Errorf("secretRetention Delete: owner references = %+v", owned.OwnerReferences)
	}
	if secretUpToDate(s, owned) || secretUpToDate(owned, s) {
		t.Error("a change of secretRetention is not a change of the Secret")
	}
	acc.Spec.SecretRetention = ""
	if !secretUpToDate(s, render.CredentialsSecret(render.CredentialsInput{Account: acc, Relay: relay, LabelIDs: []string{"1001", "news"},
		Key: render.KeyState{Key: "k", IssuedAt: now}})) {
		t.Error("a Secret is not up to date with its own rendering")
	}
}

func TestAccountRenderDefaults(t *testing.T) {
	acc := testAccountObject()
	s := render.CredentialsSecret(render.CredentialsInput{Account: acc, Relay: testRelayObject(), Key: render.KeyState{Key: "k"}})
	if got := string(s.Data[render.SecretKeyHost]); got != "mx.platform.svc" {
		t.Errorf("host = %q", got)
	}
	if got := string(s.Data[render.SecretKeyUsername]); got != "shop" {
		t.Errorf("username = %q, want the account name", got)
	}
	acc.Spec.SecretName = "mail"
	if got := render.CredentialsSecretName(acc); got != "mail" {
		t.Errorf("secret name = %q", got)
	}
}

func TestAccountKeyDigests(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	k := render.KeyState{Key: "new", IssuedAt: now, PreviousDigest: wire.SaltedDigest("old", testSalt), PreviousExpiry: now.Add(time.Minute)}
	s := render.CredentialsSecret(render.CredentialsInput{Account: testAccountObject(), Relay: testRelayObject(), Key: k})
	salted := func(key string) string { return wire.SaltedDigest(key, testSalt) }
	got := accountKeyDigests(s, now, salted)
	if want := []string{salted("new"), salted("old")}; !slices.Equal(got, want) {
		t.Errorf("during grace: %v, want %v", got, want)
	}
	got = accountKeyDigests(s, now.Add(time.Minute), salted)
	if want := []string{salted("new")}; !slices.Equal(got, want) {
		t.Errorf("after grace: %v, want %v", got, want)
	}
}
