package install

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/mailfleet/mailfleet/internal/envtestkit"
)

// checkOperatorMetrics scrapes the operator that TestChartInstall runs from
// the chart's Deployment (--metrics-secure=true, as the chart sets it) and
// as the chart's ServiceAccount, so the TokenReviews and
// SubjectAccessReviews it makes are allowed by the chart's RBAC or not at
// all. Plain HTTP and anonymous HTTPS get nothing; a ServiceAccount token
// gets 403 until the ServiceAccount is bound to the chart's
// mailfleet-metrics-reader, then the metrics. envtest's API server signs
// ServiceAccount tokens (TokenRequest) and reviews them like any other.
func checkOperatorMetrics(t *testing.T, op *operatorProcess) {
	ctx := context.Background()
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ns := env.CreateNamespace(t, "monitoring", nil)
	tokens := map[string]string{}
	for _, name := range []string{"prometheus", "stranger"} {
		if err := env.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}); err != nil {
			t.Fatal(err)
		}
		tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](600)},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("TokenRequest for %s/%s: %v", ns, name, err)
		}
		tokens[name] = tr.Status.Token
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "test-prometheus-metrics-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "mailfleet-metrics-reader"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "prometheus", Namespace: ns}},
	}
	if err := env.Client.Create(ctx, crb); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Client.Delete(context.Background(), crb) })
	// The operator caches each review's answer (a refusal for up to a
	// minute), so the test first waits until the API server itself knows
	// the tokens and the binding; the operator's first review is then final.
	for name, token := range tokens {
		envtestkit.Eventually(t, installWait, func() error {
			tr, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
				Spec: authenticationv1.TokenReviewSpec{Token: token},
			}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			if !tr.Status.Authenticated {
				return fmt.Errorf("token of %s not authenticated yet: %s", name, tr.Status.Error)
			}
			return nil
		})
	}
	envtestkit.Eventually(t, installWait, func() error {
		sar, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{
				User:                  "system:serviceaccount:" + ns + ":prometheus",
				Groups:                []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
				NonResourceAttributes: &authorizationv1.NonResourceAttributes{Path: "/metrics", Verb: "get"},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		if !sar.Status.Allowed {
			return fmt.Errorf("the binding to mailfleet-metrics-reader is not in effect yet: %s", sar.Status.Reason)
		}
		return nil
	})

	// Plain HTTP gets no metrics: the port speaks TLS only.
	if resp, err := http.Get("http://" + op.metrics + "/metrics"); err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK || strings.Contains(string(body), "controller_runtime_") {
			t.Errorf("plain HTTP /metrics: %d, %.200s; want it refused", resp.StatusCode, body)
		}
	}
	// The certificate is self-signed (no metrics.tls.secretName), as the
	// chart's ServiceMonitor says with insecureSkipVerify; what is under
	// test here is who may read.
	scrape := func(token string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "https://"+op.metrics+"/metrics", nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET /metrics: %v", err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(body)
	}
	for _, tc := range []struct {
		who, token string
		want       []int
	}{
		{"anonymous", "", []int{http.StatusUnauthorized}},
		// The API server's review of a token it cannot parse carries an
		// error, which controller-runtime's filter answers with 500 rather
		// than 401; refused either way.
		{"a token the API server never issued", "not-a-token", []int{http.StatusUnauthorized, http.StatusInternalServerError}},
		{"a ServiceAccount not bound to mailfleet-metrics-reader", tokens["stranger"], []int{http.StatusForbidden}},
		{"a ServiceAccount bound to mailfleet-metrics-reader", tokens["prometheus"], []int{http.StatusOK}},
	} {
		code, body := scrape(tc.token)
		if !slices.Contains(tc.want, code) {
			t.Errorf("%s: /metrics = %d, want %v: %.300s", tc.who, code, tc.want, body)
		}
		wantServed := slices.Contains(tc.want, http.StatusOK)
		if served := strings.Contains(body, "controller_runtime_reconcile_total"); served != wantServed {
			t.Errorf("%s: metrics served = %v, want %v", tc.who, served, wantServed)
		}
	}
}

// TestChartMetricsWiring: with metrics.secure (the default) the operator is
// told --metrics-secure=true, the chart grants it TokenReview and
// SubjectAccessReview apart from the generated ClusterRole and ships
// mailfleet-metrics-reader, and the ServiceMonitor scrapes https with
// Prometheus' ServiceAccount token. With metrics.tls.secretName the Secret is
// mounted where --metrics-cert-dir points and the ServiceMonitor verifies the
// server against its ca.crt under the Service's DNS name; without it the
// ServiceMonitor skips verification. metrics.secure=false goes back to plain
// HTTP with no review rights.
func TestChartMetricsWiring(t *testing.T) {
	const ns = "mailfleet-system"
	monitor := []string{"--set", "serviceMonitor.enabled=true"}
	endpoint := func(t *testing.T, objs []*unstructured.Unstructured) map[string]any {
		t.Helper()
		eps, _, _ := unstructured.NestedSlice(find(t, objs, "ServiceMonitor", 1)[0].Object, "spec", "endpoints")
		if len(eps) != 1 {
			t.Fatalf("ServiceMonitor endpoints %v, want one", eps)
		}
		return eps[0].(map[string]any)
	}

	t.Run("default", func(t *testing.T) {
		objs := splitYAML(t, renderChart(t, ns, monitor...))
		args := operatorDeployment(t, objs).Spec.Template.Spec.Containers[0].Args
		if !slices.Contains(args, "--metrics-secure=true") || slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--metrics-cert-dir") }) {
			t.Errorf("args %v: want --metrics-secure=true and no --metrics-cert-dir", args)
		}
		auth := byName(t, objs, "ClusterRole", "mailfleet-operator-metrics-auth")
		wantAuth := []rbacv1.PolicyRule{
			{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
			{APIGroups: []string{"authorization.k8s.io"}, Resources: []string{"subjectaccessreviews"}, Verbs: []string{"create"}},
		}
		if got := rulesOf(t, auth); !reflect.DeepEqual(got, wantAuth) {
			t.Errorf("metrics-auth rules %+v, want %+v", got, wantAuth)
		}
		binding := byName(t, objs, "ClusterRoleBinding", "mailfleet-operator-metrics-auth")
		var b rbacv1.ClusterRoleBinding
		fromUnstructured(t, binding, &b)
		if b.RoleRef.Name != auth.GetName() || len(b.Subjects) != 1 || b.Subjects[0].Name != "mailfleet-operator" || b.Subjects[0].Namespace != ns {
			t.Errorf("metrics-auth binding %+v, want the ClusterRole bound to the operator's ServiceAccount", b)
		}
		reader := rulesOf(t, byName(t, objs, "ClusterRole", "mailfleet-metrics-reader"))
		if want := []rbacv1.PolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}}; !reflect.DeepEqual(reader, want) {
			t.Errorf("metrics-reader rules %+v, want %+v", reader, want)
		}
		ep := endpoint(t, objs)
		if ep["scheme"] != "https" || ep["bearerTokenFile"] != "/var/run/secrets/kubernetes.io/serviceaccount/token" {
			t.Errorf("ServiceMonitor endpoint %v: want https with Prometheus' ServiceAccount token", ep)
		}
		if skip, _, _ := unstructured.NestedBool(ep, "tlsConfig", "insecureSkipVerify"); !skip {
			t.Errorf("ServiceMonitor endpoint %v: the self-signed certificate cannot be verified; want insecureSkipVerify", ep)
		}
	})

	t.Run("tls.secretName", func(t *testing.T) {
		objs := splitYAML(t, renderChart(t, ns, append(monitor, "--set", "metrics.tls.secretName=operator-metrics-tls")...))
		pod := operatorDeployment(t, objs).Spec.Template.Spec
		c := pod.Containers[0]
		var dir string
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--metrics-cert-dir="); ok {
				dir = v
			}
		}
		var mounted bool
		for _, m := range c.VolumeMounts {
			for _, v := range pod.Volumes {
				if v.Name == m.Name && m.MountPath == dir && v.Secret != nil && v.Secret.SecretName == "operator-metrics-tls" {
					mounted = true
				}
			}
		}
		if dir == "" || !mounted {
			t.Errorf("args %v, mounts %v, volumes %v: want Secret operator-metrics-tls mounted at --metrics-cert-dir", c.Args, c.VolumeMounts, pod.Volumes)
		}
		ep := endpoint(t, objs)
		tlsCfg, _, _ := unstructured.NestedMap(ep, "tlsConfig")
		ca, _, _ := unstructured.NestedStringMap(tlsCfg, "ca", "secret")
		wantServer := "mailfleet-operator-metrics." + ns + ".svc"
		if ca["name"] != "operator-metrics-tls" || ca["key"] != "ca.crt" || tlsCfg["serverName"] != wantServer || tlsCfg["insecureSkipVerify"] != nil {
			t.Errorf("ServiceMonitor tlsConfig %v: want ca.crt of operator-metrics-tls, serverName %s, verification on", tlsCfg, wantServer)
		}
		svc := byName(t, objs, "Service", "mailfleet-operator-metrics")
		if svc.GetNamespace() != ns {
			t.Errorf("metrics Service in %q", svc.GetNamespace())
		}
	})

	t.Run("secure=false", func(t *testing.T) {
		objs := splitYAML(t, renderChart(t, ns, append(monitor, "--set", "metrics.secure=false")...))
		args := operatorDeployment(t, objs).Spec.Template.Spec.Containers[0].Args
		if !slices.Contains(args, "--metrics-secure=false") {
			t.Errorf("args %v lack --metrics-secure=false", args)
		}
		for _, o := range find(t, objs, "ClusterRole", -1) {
			if o.GetName() == "mailfleet-operator-metrics-auth" {
				t.Error("metrics.secure=false still grants the operator TokenReview and SubjectAccessReview")
			}
		}
		if ep := endpoint(t, objs); ep["scheme"] != nil || ep["bearerTokenFile"] != nil {
			t.Errorf("ServiceMonitor endpoint %v: want plain HTTP with no token", ep)
		}
	})
}
