package controllers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/v1alpha1/v1alpha1test"
	"github.com/mailfleet/mailfleet/controllers/render"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
)

// relayWait is how long the operator may take to react; it is a ceiling,
// not a sleep: envtestkit.Eventually returns as soon as the check passes.
const relayWait = 15 * time.Second

func startRelayController(t *testing.T) {
	t.Helper()
	env.StartManager(t, withIndexes((&RelayReconciler{Options: testRenderOptions}).SetupWithManager))
}

// updateRelay changes the relay's spec as a user would, retrying on
// conflicts with the operator's status writes.
func updateRelay(t *testing.T, relay *v1.SmtpRelay, change func(*v1.SmtpRelay)) {
	t.Helper()
	env.UpdateSpec(t, relay, func() { change(relay) })
}

// waitRelayEvent waits for an events.k8s.io event about the relay.
func waitRelayEvent(t *testing.T, relay *v1.SmtpRelay, eventType, reason string) {
	t.Helper()
	envtestkit.Eventually(t, relayWait, func() error {
		var list eventsv1.EventList
		if err := env.Client.List(context.Background(), &list, client.InNamespace(relay.Namespace)); err != nil {
			return err
		}
		for _, e := range list.Items {
			if e.Regarding.Kind == "SmtpRelay" && e.Regarding.Name == relay.Name && e.Type == eventType && e.Reason == reason {
				return nil
			}
		}
		return fmt.Errorf("no %s event %s for relay %s among %d events", eventType, reason, relay.Name, len(list.Items))
	})
}

// The full object set, each owned by the relay. envtest runs no garbage
// collector (no kube-controller-manager), so deletion is not observed
// here; what makes it work in a cluster is checked instead: a controller
// owner reference with blockOwnerDeletion on every object.
func TestRelayCreatesOwnedObjects(t *testing.T) {
	ns := env.Namespace(t, map[string]string{"pod-security.kubernetes.io/enforce": "restricted"})
	env.CreateIssuer(t, ns, "ca")
	startRelayController(t)
	relay := env.CreateRelay(t, ns, "mx")

	objects := []struct {
		obj  client.Object
		name string
	}{
		{&corev1.ConfigMap{}, "mx-config"},
		{&corev1.ServiceAccount{}, "mx-relay"},
		{&rbacv1.Role{}, "mx-relay"},
		{&rbacv1.RoleBinding{}, "mx-relay"},
		{&certmanagerv1.Certificate{}, "mx"},
		{&appsv1.Deployment{}, "mx"},
		{&corev1.Service{}, "mx"},
		{&policyv1.PodDisruptionBudget{}, "mx"},
	}
	for _, o := range objects {
		t.Run(fmt.Sprintf("%T", o.obj), func(t *testing.T) {
			envtestkit.Eventually(t, relayWait, func() error { return env.Get(o.obj, ns, o.name) })
			checkRelayOwned(t, o.obj, relay)
		})
	}

	got := env.WaitRelayReady(t, relayWait, relay, metav1.ConditionFalse, v1.ReasonCertificateNotReady)
	if want := "mx." + ns + ".svc"; got.Status.Endpoint != want {
		t.Errorf("endpoint = %q, want %q", got.Status.Endpoint, want)
	}
	checkPodAdmitted(t, ns)
}

func checkRelayOwned(t *testing.T, obj client.Object, relay *v1.SmtpRelay) {
	t.Helper()
	refs := obj.GetOwnerReferences()
	if len(refs) != 1 {
		t.Fatalf("owner references = %+v, want the relay alone", refs)
	}
	ref := refs[0]
	if ref.UID != relay.UID || ref.Kind != "SmtpRelay" || ref.APIVersion != v1.GroupVersion.String() ||
		!ptr.Deref(ref.Controller, false) || !ptr.Deref(ref.BlockOwnerDeletion, false) {
		t.Errorf("owner reference = %+v, want controller SmtpRelay %s with blockOwnerDeletion", ref, relay.UID)
	}
	if obj.GetLabels()[render.LabelManagedBy] != render.ManagedByValue || obj.GetLabels()[render.LabelRelay] != relay.Name {
		t.Errorf("labels = %v", obj.GetLabels())
	}
	applied := false
	for _, mf := range obj.GetManagedFields() {
		applied = applied || (mf.Manager == FieldManager && mf.Operation == metav1.ManagedFieldsOperationApply)
	}
	if !applied {
		t.Errorf("no server-side apply by %s in managedFields", FieldManager)
	}
}

// checkPodAdmitted submits (as a dry run) a pod made from the Deployment's
// stored template to a namespace that enforces PodSecurity "restricted":
// the API server's own admission plugin is the judge. The same pod with
// one capability added is refused first, to show the namespace enforces.
func checkPodAdmitted(t *testing.T, ns string) {
	t.Helper()
	d := &appsv1.Deployment{}
	if err := env.Get(d, ns, "mx"); err != nil {
		t.Fatal(err)
	}
	pod := func(name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: *d.Spec.Template.Spec.DeepCopy()}
	}
	bad := pod("net-raw")
	bad.Spec.Containers[0].SecurityContext.Capabilities.Add = []corev1.Capability{"NET_RAW"}
	if err := env.Client.Create(context.Background(), bad, client.DryRunAll); !apierrors.IsForbidden(err) {
		t.Fatalf("pod adding NET_RAW: err = %v, want Forbidden (is PodSecurity admission on?)", err)
	}
	if err := env.Client.Create(context.Background(), pod("relay"), client.DryRunAll); err != nil {
		t.Errorf("the relay pod is refused under PodSecurity restricted: %v", err)
	}
}

func TestRelayUpdates(t *testing.T) {
	ns := env.Namespace(t, nil)
	env.CreateIssuer(t, ns, "ca")
	env.CreateIssuer(t, ns, "ca2")
	startRelayController(t)
	relay := env.CreateRelay(t, ns, "mx")
	d := &appsv1.Deployment{}
	envtestkit.Eventually(t, relayWait, func() error { return env.Get(d, ns, "mx") })
	firstHash := d.Spec.Template.Annotations[render.AnnotationConfigHash]

	t.Run("replicas", func(t *testing.T) {
		updateRelay(t, relay, func(r *v1.SmtpRelay) { r.Spec.Replicas = ptr.To(int32(3)) })
		envtestkit.Eventually(t, relayWait, func() error {
			if err := env.Get(d, ns, "mx"); err != nil {
				return err
			}
			if got := ptr.Deref(d.Spec.Replicas, 0); got != 3 {
				return fmt.Errorf("deployment replicas = %d, want 3", got)
			}
			return nil
		})
	})

	t.Run("listeners", func(t *testing.T) {
		updateRelay(t, relay, func(r *v1.SmtpRelay) {
			r.Spec.Listeners = []v1.RelayListener{
				{Name: "submission", Port: 587, TLS: v1.ListenerStartTLS, AuthRequiresTLS: ptr.To(true)},
				{Name: "alt", Port: 2526, TLS: v1.ListenerStartTLS},
			}
		})
		want := []string{"submission:587->10587", "alt:2526->2526"}
		envtestkit.Eventually(t, relayWait, func() error {
			svc := &corev1.Service{}
			if err := env.Get(svc, ns, "mx"); err != nil {
				return err
			}
			var got []string
			for _, p := range svc.Spec.Ports {
				got = append(got, fmt.Sprintf("%s:%d->%s", p.Name, p.Port, p.TargetPort.String()))
			}
			if !reflect.DeepEqual(got, want) {
				return fmt.Errorf("service ports = %v, want %v", got, want)
			}
			return nil
		})
		envtestkit.Eventually(t, relayWait, func() error {
			if err := env.Get(d, ns, "mx"); err != nil {
				return err
			}
			if d.Spec.Template.Annotations[render.AnnotationConfigHash] == firstHash {
				return errors.New("config hash unchanged: the pods would keep the old listeners")
			}
			return nil
		})
	})

	t.Run("issuer", func(t *testing.T) {
		updateRelay(t, relay, func(r *v1.SmtpRelay) { r.Spec.TLS.IssuerRef.Name = "ca2" })
		envtestkit.Eventually(t, relayWait, func() error {
			cert := &certmanagerv1.Certificate{}
			if err := env.Get(cert, ns, "mx"); err != nil {
				return err
			}
			if cert.Spec.IssuerRef.Name != "ca2" {
				return fmt.Errorf("certificate issuer = %q, want ca2", cert.Spec.IssuerRef.Name)
			}
			return nil
		})
	})

	t.Run("drift is put back", func(t *testing.T) {
		cm := &corev1.ConfigMap{}
		if err := env.Get(cm, ns, "mx-config"); err != nil {
			t.Fatal(err)
		}
		want := cm.Data[render.ConfigKey]
		patch := client.RawPatch("application/merge-patch+json", []byte(`{"data":{"relay.yaml":"hostname: tampered\n"}}`))
		if err := env.Client.Patch(context.Background(), cm, patch, client.FieldOwner("kubectl-edit")); err != nil {
			t.Fatal(err)
		}
		envtestkit.Eventually(t, relayWait, func() error {
			if err := env.Get(cm, ns, "mx-config"); err != nil {
				return err
			}
			if cm.Data[render.ConfigKey] != want {
				return errors.New("hand edit of relay.yaml still in place")
			}
			return nil
		})
	})

	t.Run("own secret replaces the certificate", func(t *testing.T) {
		updateRelay(t, relay, func(r *v1.SmtpRelay) { r.Spec.TLS = v1.RelayTLS{SecretName: "own-tls"} })
		envtestkit.Eventually(t, relayWait, func() error {
			err := env.Get(&certmanagerv1.Certificate{}, ns, "mx")
			if !apierrors.IsNotFound(err) {
				return fmt.Errorf("certificate still there (err %v)", err)
			}
			if err := env.Get(d, ns, "mx"); err != nil {
				return err
			}
			for _, v := range d.Spec.Template.Spec.Volumes {
				if v.Name == "tls" && v.Secret.SecretName != "own-tls" {
					return fmt.Errorf("tls volume mounts %q, want own-tls", v.Secret.SecretName)
				}
			}
			return nil
		})
	})
}

// The test plays the two controllers envtest does not run. cert-manager:
// it writes the Certificate's Secret from a CA it generates (relay/certs)
// and sets the Certificate's Ready condition through the status
// subresource. The Deployment controller (no kubelet either): it sets the
// Deployment's status as ready pods would.
func TestRelayConditions(t *testing.T) {
	ns := env.Namespace(t, nil)
	startRelayController(t)
	relay := env.CreateRelay(t, ns, "mx")

	got := env.WaitRelayReady(t, relayWait, relay, metav1.ConditionFalse, v1.ReasonIssuerNotFound)
	if msg := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionReady).Message; !strings.Contains(msg, `Issuer "ca" in namespace "`+ns+`"`) {
		t.Errorf("message %q does not name the issuer", msg)
	}
	waitRelayEvent(t, relay, corev1.EventTypeWarning, v1.ReasonIssuerNotFound)

	env.CreateIssuer(t, ns, "ca")
	env.WaitRelayReady(t, relayWait, relay, metav1.ConditionFalse, v1.ReasonCertificateNotReady)

	env.IssueRelayCertificate(t, relayWait, ns, "mx", "mx-tls")
	got = env.WaitRelayReady(t, relayWait, relay, metav1.ConditionFalse, v1.ReasonReplicasNotReady)
	if got.Status.ReadyReplicas != 0 {
		t.Errorf("readyReplicas = %d before any pod is ready", got.Status.ReadyReplicas)
	}

	env.MarkDeploymentReady(t, ns, "mx")
	got = env.WaitRelayReady(t, relayWait, relay, metav1.ConditionTrue, v1.ReasonReady)
	if got.Status.ReadyReplicas != 2 || got.Status.ObservedGeneration != got.Generation {
		t.Errorf("status = %+v, want 2 ready replicas at generation %d", got.Status, got.Generation)
	}
	waitRelayEvent(t, relay, corev1.EventTypeNormal, v1.ReasonReady)

	updateRelay(t, relay, func(r *v1.SmtpRelay) { r.Spec.TLS = v1.RelayTLS{SecretName: "own-tls"} })
	env.WaitRelayReady(t, relayWait, relay, metav1.ConditionFalse, v1.ReasonTLSSecretNotFound)
	waitRelayEvent(t, relay, corev1.EventTypeWarning, v1.ReasonTLSSecretNotFound)
	env.CreateTLSSecret(t, ns, "own-tls")
	// The new Secret changed the pod template: not Ready until the pods
	// of the new template are.
	got = env.WaitRelayReady(t, relayWait, relay, metav1.ConditionFalse, v1.ReasonReplicasNotReady)
	if msg := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionReady).Message; !strings.Contains(msg, "rolling out") {
		t.Errorf("message %q does not say the relay is rolling out", msg)
	}
	env.MarkDeploymentReady(t, ns, "mx")
	env.WaitRelayReady(t, relayWait, relay, metav1.ConditionTrue, v1.ReasonReady)
}

func TestRelayClusterIssuer(t *testing.T) {
	ns := env.Namespace(t, nil)
	startRelayController(t)
	name := "le-" + rand.String(6)
	relay := env.CreateRelay(t, ns, "mx", v1alpha1test.WithIssuer("ClusterIssuer", name))
	got := env.WaitRelayReady(t, relayWait, relay, metav1.ConditionFalse, v1.ReasonIssuerNotFound)
	if msg := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionReady).Message; !strings.Contains(msg, `ClusterIssuer "`+name+`"`) {
		t.Errorf("message %q does not name the ClusterIssuer", msg)
	}
	ci := &certmanagerv1.ClusterIssuer{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       certmanagerv1.IssuerSpec{IssuerConfig: certmanagerv1.IssuerConfig{SelfSigned: &certmanagerv1.SelfSignedIssuer{}}},
	}
	if err := env.Client.Create(context.Background(), ci); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Client.Delete(context.Background(), ci) })
	env.WaitRelayReady(t, relayWait, relay, metav1.ConditionFalse, v1.ReasonCertificateNotReady)
}

func TestRelayRenderFailed(t *testing.T) {
	ns := env.Namespace(t, nil)
	startRelayController(t)
	relay := env.CreateRelay(t, ns, "mx", v1alpha1test.WithListeners(v1.RelayListener{Name: "metrics", Port: 2525}))
	got := env.WaitRelayReady(t, relayWait, relay, metav1.ConditionFalse, v1.ReasonRenderFailed)
	if msg := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionReady).Message; !strings.Contains(msg, `listener "metrics"`) {
		t.Errorf("message %q does not name the listener", msg)
	}
	waitRelayEvent(t, relay, corev1.EventTypeWarning, v1.ReasonRenderFailed)
	if err := env.Get(&appsv1.Deployment{}, ns, "mx"); !apierrors.IsNotFound(err) {
		t.Errorf("deployment of an unrenderable relay: err = %v, want NotFound", err)
	}
}

// The operator's generated ClusterRole (config/rbac/role.yaml, from the
// RBAC markers) is enough to run a relay, including creating the relay's
// Role: the API server refuses a Role granting verbs its creator does not
// hold (RBAC escalation prevention). The manager runs as a user bound to
// that ClusterRole alone, so a marker that drifts from what the render
// functions need fails here rather than in a cluster.
func TestRelayOperatorRBAC(t *testing.T) {
	user := "mailfleet-operator-" + rand.String(6)
	bindOperatorRole(t, user)
	ns := env.Namespace(t, nil)
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user}
	startManagerWithConfig(t, cfg)

	relay := env.CreateRelay(t, ns, "mx")
	env.WaitRelayReady(t, relayWait, relay, metav1.ConditionFalse, v1.ReasonIssuerNotFound)
	waitRelayEvent(t, relay, corev1.EventTypeWarning, v1.ReasonIssuerNotFound)
	env.CreateIssuer(t, ns, "ca")
	env.WaitRelayReady(t, relayWait, relay, metav1.ConditionFalse, v1.ReasonCertificateNotReady)
	if err := env.Get(&rbacv1.Role{}, ns, "mx-relay"); err != nil {
		t.Errorf("relay role: %v", err)
	}
}

// bindOperatorRole installs the generated ClusterRole under a name of the
// test's own and binds it to user.
func bindOperatorRole(t *testing.T, user string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "config", "rbac", "role.yaml"))
	if err != nil {
		t.Fatalf("read the generated role (run make manifests): %v", err)
	}
	role := &rbacv1.ClusterRole{}
	if err := yaml.UnmarshalStrict(data, role); err != nil {
		t.Fatalf("parse role.yaml: %v", err)
	}
	role.Name = user
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	for _, obj := range []client.Object{role, binding} {
		if err := env.Client.Create(context.Background(), obj); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { env.Client.Delete(context.Background(), obj) })
	}
}

// startManagerWithConfig is env.StartManager for a relay controller that talks
// to the API server with cfg (here: as another user).
func startManagerWithConfig(t *testing.T, cfg *rest.Config) {
	t.Helper()
	env.RunManagerAs(t, cfg, withIndexes((&RelayReconciler{Options: testRenderOptions}).SetupWithManager))
}

// TestRelayRateLimitSecrets checks that a relay whose sidecar needs a Redis
// password Secret that does not exist says so, recovers once it exists, and
// that the pod with the sidecar passes PodSecurity "restricted".
func TestRelayRateLimitSecrets(t *testing.T) {
	ns := env.Namespace(t, map[string]string{"pod-security.kubernetes.io/enforce": "restricted"})
	startRelayController(t)
	env.CreateIssuer(t, ns, "ca")
	relay := env.CreateRelay(t, ns, "mx", v1alpha1test.WithRateLimit(&v1.RelayRateLimit{
		Redis: v1.RedisEndpoint{Address: "redis:6379", PasswordSecretRef: &v1.SecretKeySelector{Name: "redis-auth", Key: "password"}},
	}))
	env.IssueRelayCertificate(t, relayWait, ns, "mx", "mx-tls")

	got := env.WaitRelayReady(t, relayWait, relay, metav1.ConditionFalse, v1.ReasonSecretNotFound)
	msg := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionReady).Message
	if !strings.Contains(msg, `"redis-auth"`) || !strings.Contains(msg, "spec.rateLimit.redis.passwordSecretRef") {
		t.Errorf("message %q does not name the Secret and the field", msg)
	}
	waitRelayEvent(t, relay, corev1.EventTypeWarning, v1.ReasonSecretNotFound)
	checkPodAdmitted(t, ns)

	if err := env.Client.Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "redis-auth", Namespace: ns},
		StringData: map[string]string{"password": "not-used-here"},
	}); err != nil {
		t.Fatal(err)
	}
	env.WaitRelayReady(t, relayWait, relay, metav1.ConditionFalse, v1.ReasonReplicasNotReady)
}

// TestRelayScaleSubresource scales an SmtpRelay the way a
// HorizontalPodAutoscaler does, through its scale subresource: the
// Deployment follows, and the scale's status reports the pods and the
// selector an HPA reads their metrics with.
func TestRelayScaleSubresource(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, nil)
	startRelayController(t)
	env.CreateIssuer(t, ns, "ca")
	relay := env.CreateRelay(t, ns, "mx")
	envtestkit.Eventually(t, relayWait, func() error { return env.Get(&appsv1.Deployment{}, ns, "mx") })

	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		scale := &autoscalingv1.Scale{}
		if err := env.Client.SubResource("scale").Get(ctx, relay, scale); err != nil {
			return err
		}
		scale.Spec.Replicas = 5
		return env.Client.SubResource("scale").Update(ctx, relay, client.WithSubResourceBody(scale))
	})
	if err != nil {
		t.Fatalf("scale the relay: %v", err)
	}
	envtestkit.Eventually(t, relayWait, func() error {
		d := &appsv1.Deployment{}
		if err := env.Get(d, ns, "mx"); err != nil {
			return err
		}
		if got := ptr.Deref(d.Spec.Replicas, 0); got != 5 {
			return fmt.Errorf("deployment replicas %d, want 5", got)
		}
		return nil
	})
	env.MarkDeploymentReady(t, ns, "mx")
	envtestkit.Eventually(t, relayWait, func() error {
		scale := &autoscalingv1.Scale{}
		if err := env.Client.SubResource("scale").Get(ctx, relay, scale); err != nil {
			return err
		}
		want := "app.kubernetes.io/instance=mx,app.kubernetes.io/name=mailfleet-relay,mailfleet.io/relay=mx"
		if scale.Status.Replicas != 5 || scale.Status.Selector != want {
			return fmt.Errorf("scale status = %+v, want 5 replicas and selector %q", scale.Status, want)
		}
		return nil
	})
}

// TestRelayRollsOnCredentialsChange rotates the smarthost's password in its
// Secret: the pods read it once at start, so the pod template must change
// and roll them onto the new one.
func TestRelayRollsOnCredentialsChange(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, nil)
	startRelayController(t)
	env.CreateIssuer(t, ns, "ca")
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "provider", Namespace: ns},
		StringData: map[string]string{"username": "relay", "password": "first"},
	}
	if err := env.Client.Create(ctx, secret); err != nil {
		t.Fatal(err)
	}
	env.CreateRelay(t, ns, "mx", func(r *v1.SmtpRelay) {
		r.Spec.Delivery.Smarthost = &v1.Smarthost{Host: "smtp.provider.example", AuthSecretRef: &v1.LocalSecretReference{Name: "provider"}}
	})
	digest := func() string {
		d := &appsv1.Deployment{}
		if err := env.Get(d, ns, "mx"); err != nil {
			return ""
		}
		return d.Spec.Template.Annotations["mailfleet.io/secrets-digest"]
	}
	var first string
	envtestkit.Eventually(t, relayWait, func() error {
		if first = digest(); first == "" {
			return errors.New("no secrets digest on the pod template yet")
		}
		return nil
	})
	secret.StringData = map[string]string{"username": "relay", "password": "second"}
	if err := env.Client.Update(ctx, secret); err != nil {
		t.Fatal(err)
	}
	envtestkit.Eventually(t, relayWait, func() error {
		if got := digest(); got == first {
			return errors.New("the pod template did not change after the password was rotated")
		}
		return nil
	})
}
