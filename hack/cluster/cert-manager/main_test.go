package main

// This test runs the binary build.sh makes, out of cluster, against a real
// kube-apiserver and etcd (envtest, from KUBEBUILDER_ASSETS), as the
// ServiceAccount identity and with exactly the RBAC of
// hack/cluster/manifests/cert-manager.yaml, and checks what the e2e tests
// rely on: the sample CA Issuer becomes Ready, a relay's Certificate is
// issued into a Secret that chains to the CA, and renewals, manual and
// scheduled, put a new certificate in the Secret.
//
//	cd hack/cluster/cert-manager && KUBEBUILDER_ASSETS=$PWD/../../../bin/k8s go test -count=1 ./...

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
)

const (
	// Paths from this directory into the repository.
	repoRoot     = "../../.."
	manifestPath = "../manifests/cert-manager.yaml"
	samplesPath  = repoRoot + "/config/samples/certmanager_v1_issuer.yaml"

	// Where build.sh puts its output when CLUSTER_BIN_DIR is not set.
	binaryPath = repoRoot + "/bin/cluster/bin/cert-manager-controller"
	crdsPath   = repoRoot + "/bin/cluster/cert-manager-crds.yaml"

	// The identity the Deployment runs as, per the manifest.
	cmNamespace      = "cert-manager"
	cmServiceAccount = "cert-manager"

	testNamespace = "mailfleet-cm-test"
	waitTimeout   = 90 * time.Second
)

// TestMain builds the binary and the CRD file with build.sh, so the test
// checks exactly what goes into the cluster image; build.sh returns at once
// when they are up to date.
func TestMain(m *testing.M) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fmt.Fprintln(os.Stderr, "KUBEBUILDER_ASSETS is not set: run hack/build-envtest.sh from the repository root and set it to bin/k8s")
		os.Exit(1)
	}
	cmd := exec.Command("./build.sh")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build.sh:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func TestCertManagerController(t *testing.T) {
	env := &envtest.Environment{
		CRDInstallOptions:     envtest.CRDInstallOptions{Paths: []string{crdsPath}},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		env.Stop() // a refused CRD fails Start after the API server is up
		t.Fatalf("starting envtest: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping envtest: %v", err)
		}
	})

	scheme := runtime.NewScheme()
	must(t, clientgoscheme.AddToScheme(scheme))
	must(t, cmapi.AddToScheme(scheme))
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	checkManifest(ctx, t, c)

	// The controller authenticates as the Deployment's ServiceAccount would:
	// the same user name and groups, so the manifest's ClusterRoleBinding
	// is all that authorizes it.
	user, err := env.AddUser(envtest.User{
		Name:   "system:serviceaccount:" + cmNamespace + ":" + cmServiceAccount,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + cmNamespace},
	}, nil)
	must(t, err)
	kubeconfig, err := user.KubeConfig()
	must(t, err)
	kubeconfigPath := filepath.Join(t.TempDir(), "kubeconfig")
	must(t, os.WriteFile(kubeconfigPath, kubeconfig, 0o600))

	proc := startController(t, kubeconfigPath)

	must(t, c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNamespace}}))

	var caPool *x509.CertPool
	t.Run("sample issuers become ready", func(t *testing.T) {
		for _, obj := range readYAML(t, samplesPath) {
			obj.SetNamespace(testNamespace)
			must(t, c.Create(ctx, obj))
		}
		waitIssuerReady(ctx, t, c, &cmapi.Issuer{}, types.NamespacedName{Namespace: testNamespace, Name: "mailfleet-selfsigned"})
		waitCertificateReady(ctx, t, c, testNamespace, "mailfleet-ca")
		waitIssuerReady(ctx, t, c, &cmapi.Issuer{}, types.NamespacedName{Namespace: testNamespace, Name: "mailfleet-ca"})

		ca := getSecret(ctx, t, c, testNamespace, "mailfleet-ca")
		caCert := parseCert(t, ca.Data[corev1.TLSCertKey])
		if !caCert.IsCA || caCert.Subject.CommonName != "mailfleet sample CA" {
			t.Fatalf("mailfleet-ca: IsCA %v, subject %q; want a CA named \"mailfleet sample CA\"", caCert.IsCA, caCert.Subject)
		}
		caPool = x509.NewCertPool()
		caPool.AddCert(caCert)
	})
	if caPool == nil {
		t.FailNow()
	}

	// What controllers/render's relayCertificate asks for, for an
	// SmtpRelay named "smtp" with hostname smtp.example.com and
	// spec.tls.issuerRef naming the sample CA Issuer.
	const relaySecret = "smtp-tls"
	relayCert := &cmapi.Certificate{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNamespace, Name: "smtp"},
		Spec: cmapi.CertificateSpec{
			SecretName: relaySecret,
			SecretTemplate: &cmapi.CertificateSecretTemplate{Labels: map[string]string{
				"app.kubernetes.io/managed-by": "mailfleet-operator",
				"mailfleet.io/relay":           "smtp",
			}},
			DNSNames:   []string{"smtp.example.com"},
			IssuerRef:  cmmeta.IssuerReference{Name: "mailfleet-ca", Kind: "Issuer", Group: "cert-manager.io"},
			PrivateKey: &cmapi.CertificatePrivateKey{RotationPolicy: cmapi.RotationPolicyAlways},
			Usages:     []cmapi.KeyUsage{cmapi.UsageServerAuth},
		},
	}

	var issued *x509.Certificate
	var issuedKey []byte
	t.Run("relay certificate is issued", func(t *testing.T) {
		must(t, c.Create(ctx, relayCert))
		waitCertificateReady(ctx, t, c, testNamespace, relayCert.Name)
		s := getSecret(ctx, t, c, testNamespace, relaySecret)
		issued = checkLeaf(t, s, caPool, "smtp.example.com")
		issuedKey = s.Data[corev1.TLSPrivateKeyKey]
		if s.Type != corev1.SecretTypeTLS {
			t.Errorf("Secret type %q, want %q", s.Type, corev1.SecretTypeTLS)
		}
		for k, v := range relayCert.Spec.SecretTemplate.Labels {
			if s.Labels[k] != v {
				t.Errorf("Secret label %s=%q, want %q (from secretTemplate)", k, s.Labels[k], v)
			}
		}
	})
	if issued == nil {
		t.FailNow()
	}

	t.Run("manual renewal issues a new certificate", func(t *testing.T) {
		// What `cmctl renew` does: set the Issuing condition.
		// The controllers may still be writing the status, so retry on a
		// conflict as cmctl does.
		crt := &cmapi.Certificate{}
		must(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if err := c.Get(ctx, client.ObjectKeyFromObject(relayCert), crt); err != nil {
				return err
			}
			crt.Status.Conditions = append(crt.Status.Conditions, cmapi.CertificateCondition{
				Type:               cmapi.CertificateConditionIssuing,
				Status:             cmmeta.ConditionTrue,
				Reason:             "ManuallyTriggered",
				Message:            "Certificate re-issuance manually triggered",
				LastTransitionTime: &metav1.Time{Time: time.Now()},
			})
			return c.Status().Update(ctx, crt)
		}))

		s := waitSecretRenewed(ctx, t, c, testNamespace, relaySecret, issued)
		renewed := checkLeaf(t, s, caPool, "smtp.example.com")
		if bytes.Equal(s.Data[corev1.TLSPrivateKeyKey], issuedKey) {
			t.Error("the private key did not change; rotationPolicy Always asks for a new one")
		}
		waitCertificateReady(ctx, t, c, testNamespace, relayCert.Name)
		crt = &cmapi.Certificate{}
		must(t, c.Get(ctx, client.ObjectKeyFromObject(relayCert), crt))
		if crt.Status.Revision == nil || *crt.Status.Revision < 2 {
			t.Errorf("status.revision %v, want 2 or more after a renewal", crt.Status.Revision)
		}
		t.Logf("renewed: serial %s -> %s", issued.SerialNumber, renewed.SerialNumber)
	})

	t.Run("scheduled renewal issues a new certificate", func(t *testing.T) {
		// cert-manager's webhook refuses durations under an hour, but with
		// renewBefore 10s short of the duration the renewal falls due 10s
		// after issuance, so the trigger controller's own schedule renews it.
		crt := &cmapi.Certificate{
			ObjectMeta: metav1.ObjectMeta{Namespace: testNamespace, Name: "short"},
			Spec: cmapi.CertificateSpec{
				SecretName:  "short-tls",
				DNSNames:    []string{"short.example.com"},
				Duration:    &metav1.Duration{Duration: time.Hour},
				RenewBefore: &metav1.Duration{Duration: time.Hour - 10*time.Second},
				IssuerRef:   cmmeta.IssuerReference{Name: "mailfleet-ca", Kind: "Issuer", Group: "cert-manager.io"},
			},
		}
		must(t, c.Create(ctx, crt))
		waitCertificateReady(ctx, t, c, testNamespace, crt.Name)
		first := checkLeaf(t, getSecret(ctx, t, c, testNamespace, "short-tls"), caPool, "short.example.com")
		s := waitSecretRenewed(ctx, t, c, testNamespace, "short-tls", first)
		second := checkLeaf(t, s, caPool, "short.example.com")
		t.Logf("renewed on schedule: serial %s (until %s) -> %s (until %s)",
			first.SerialNumber, first.NotAfter.Format(time.RFC3339), second.SerialNumber, second.NotAfter.Format(time.RFC3339))
		// It would renew every 10s from now on.
		must(t, c.Delete(ctx, crt))
	})

	t.Run("cluster issuers", func(t *testing.T) {
		// A CA ClusterIssuer reads its Secret from the cluster resource
		// namespace (--cluster-resource-namespace, cert-manager).
		selfSigned := &cmapi.ClusterIssuer{
			ObjectMeta: metav1.ObjectMeta{Name: "mailfleet-test-selfsigned"},
			Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{SelfSigned: &cmapi.SelfSignedIssuer{}}},
		}
		must(t, c.Create(ctx, selfSigned))
		waitIssuerReady(ctx, t, c, &cmapi.ClusterIssuer{}, types.NamespacedName{Name: selfSigned.Name})
		caCrt := &cmapi.Certificate{
			ObjectMeta: metav1.ObjectMeta{Namespace: cmNamespace, Name: "mailfleet-test-ca"},
			Spec: cmapi.CertificateSpec{
				IsCA:       true,
				CommonName: "mailfleet test cluster CA",
				SecretName: "mailfleet-test-ca",
				PrivateKey: &cmapi.CertificatePrivateKey{Algorithm: cmapi.ECDSAKeyAlgorithm, Size: 256},
				IssuerRef:  cmmeta.IssuerReference{Name: selfSigned.Name, Kind: "ClusterIssuer", Group: "cert-manager.io"},
			},
		}
		must(t, c.Create(ctx, caCrt))
		waitCertificateReady(ctx, t, c, cmNamespace, caCrt.Name)
		ca := &cmapi.ClusterIssuer{
			ObjectMeta: metav1.ObjectMeta{Name: "mailfleet-test-ca"},
			Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: caCrt.Spec.SecretName}}},
		}
		must(t, c.Create(ctx, ca))
		waitIssuerReady(ctx, t, c, &cmapi.ClusterIssuer{}, types.NamespacedName{Name: ca.Name})

		leaf := &cmapi.Certificate{
			ObjectMeta: metav1.ObjectMeta{Namespace: testNamespace, Name: "via-cluster-issuer"},
			Spec: cmapi.CertificateSpec{
				SecretName: "via-cluster-issuer-tls",
				DNSNames:   []string{"cluster.example.com"},
				IssuerRef:  cmmeta.IssuerReference{Name: ca.Name, Kind: "ClusterIssuer", Group: "cert-manager.io"},
				Usages:     []cmapi.KeyUsage{cmapi.UsageServerAuth},
			},
		}
		must(t, c.Create(ctx, leaf))
		waitCertificateReady(ctx, t, c, testNamespace, leaf.Name)
		pool := x509.NewCertPool()
		pool.AddCert(parseCert(t, getSecret(ctx, t, c, cmNamespace, caCrt.Spec.SecretName).Data[corev1.TLSCertKey]))
		checkLeaf(t, getSecret(ctx, t, c, testNamespace, leaf.Spec.SecretName), pool, "cluster.example.com")
	})

	t.Run("health and metrics endpoints", func(t *testing.T) {
		for _, u := range []string{"http://" + proc.healthzAddr + "/livez", "http://" + proc.metricsAddr + "/metrics"} {
			resp, err := http.Get(u)
			if err != nil {
				t.Fatalf("GET %s: %v", u, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("GET %s: %s: %s", u, resp.Status, body)
			}
			if strings.HasSuffix(u, "/metrics") && !bytes.Contains(body, []byte("certmanager_certificate_ready_status")) {
				t.Errorf("GET %s: no certmanager_certificate_ready_status metric", u)
			}
		}
	})

	// SIGTERM, as the kubelet sends it, stops the controller cleanly.
	proc.stop(t)

	// The controller logs API errors and retries, so a missing permission
	// shows up in the log even where the test's waits would pass by luck.
	if n := proc.logLines(t, func(l string) bool { return strings.Contains(strings.ToLower(l), "forbidden") }); len(n) > 0 {
		t.Errorf("the controller was refused by RBAC %d times; the manifest's ClusterRole is missing rules. First refusals:\n%s",
			len(n), strings.Join(shorten(n[:min(len(n), 5)], 400), "\n"))
	}
	// Other errors (update conflicts, mostly) are retried and normal; shown
	// for whoever reads the output.
	for _, l := range shorten(proc.logLines(t, func(l string) bool { return strings.HasPrefix(l, "E") }), 400) {
		t.Logf("controller error log: %s", l)
	}
}

// checkManifest creates what hack/cluster/manifests/cert-manager.yaml holds,
// and checks that a pod from its Deployment passes the namespace's
// "restricted" Pod Security enforcement (which it also shows is working by
// refusing a pod that is not restricted).
func checkManifest(ctx context.Context, t *testing.T, c client.Client) {
	t.Helper()
	var deploy *appsv1.Deployment
	for _, obj := range readYAML(t, manifestPath) {
		must(t, c.Create(ctx, obj))
		if obj.GetKind() == "Deployment" {
			deploy = &appsv1.Deployment{}
			must(t, runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, deploy))
		}
	}
	if deploy == nil {
		t.Fatal("no Deployment in the manifest")
	}
	if deploy.Namespace != cmNamespace || deploy.Spec.Template.Spec.ServiceAccountName != cmServiceAccount {
		t.Fatalf("Deployment runs as %s/%s; the test runs the controller as %s/%s",
			deploy.Namespace, deploy.Spec.Template.Spec.ServiceAccountName, cmNamespace, cmServiceAccount)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: deploy.Namespace, Name: "pod-security-check", Labels: deploy.Spec.Template.Labels},
		Spec:       *deploy.Spec.Template.Spec.DeepCopy(),
	}
	if err := c.Create(ctx, pod, client.DryRunAll); err != nil {
		t.Fatalf("a pod from the Deployment's template is refused: %v", err)
	}
	bad := pod.DeepCopy()
	bad.Spec.SecurityContext = nil
	bad.Spec.Containers[0].SecurityContext = nil
	if err := c.Create(ctx, bad, client.DryRunAll); err == nil || !apierrors.IsForbidden(err) {
		t.Fatalf("a pod without securityContext was not refused by Pod Security admission (err %v); the check above proves nothing", err)
	}
}

type controllerProcess struct {
	cmd                      *exec.Cmd
	log                      string
	done                     chan error
	metricsAddr, healthzAddr string
}

func startController(t *testing.T, kubeconfig string) *controllerProcess {
	t.Helper()
	p := &controllerProcess{
		log:         filepath.Join(t.TempDir(), "controller.log"),
		done:        make(chan error, 1),
		metricsAddr: freeAddr(t),
		healthzAddr: freeAddr(t),
	}
	logFile, err := os.Create(p.log)
	must(t, err)
	// The Deployment's flags, but for where to reach the API server and
	// which local ports to listen on.
	p.cmd = exec.Command(binaryPath,
		"--kubeconfig="+kubeconfig,
		"--cluster-resource-namespace="+cmNamespace,
		"--metrics-listen-address="+p.metricsAddr,
		"--healthz-listen-address="+p.healthzAddr,
		"--v=2",
	)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	must(t, p.cmd.Start())
	go func() { p.done <- p.cmd.Wait(); logFile.Close() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			if len(b) > 20000 {
				b = b[len(b)-20000:]
			}
			t.Logf("controller log (tail):\n%s", b)
		}
	})
	return p
}

func (p *controllerProcess) stop(t *testing.T) {
	t.Helper()
	must(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("controller exited with %v after SIGTERM, want status 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Errorf("controller still running 20s after SIGTERM")
	}
}

// logLines returns the controller's log lines that match.
func (p *controllerProcess) logLines(t *testing.T, match func(string) bool) []string {
	t.Helper()
	f, err := os.Open(p.log)
	must(t, err)
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if match(sc.Text()) {
			lines = append(lines, sc.Text())
		}
	}
	return lines
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

func readYAML(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	var objs []*unstructured.Unstructured
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
			return objs
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if len(obj.Object) > 0 {
			objs = append(objs, obj)
		}
	}
}

func poll(ctx context.Context, t *testing.T, what string, cond func(context.Context) (bool, error)) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, waitTimeout, true, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// waitIssuerReady waits for an Issuer or ClusterIssuer (obj says which) to be
// Ready.
func waitIssuerReady(ctx context.Context, t *testing.T, c client.Client, obj cmapi.GenericIssuer, key types.NamespacedName) {
	t.Helper()
	poll(ctx, t, fmt.Sprintf("%T %s to be Ready", obj, key), func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, key, obj); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		for _, cond := range obj.GetStatus().Conditions {
			if cond.Type == cmapi.IssuerConditionReady {
				return cond.Status == cmmeta.ConditionTrue, nil
			}
		}
		return false, nil
	})
}

func waitCertificateReady(ctx context.Context, t *testing.T, c client.Client, ns, name string) {
	t.Helper()
	var last string
	crt := &cmapi.Certificate{}
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, waitTimeout, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, crt); err != nil {
			return false, err
		}
		last = fmt.Sprintf("%+v", crt.Status.Conditions)
		ready, issuing := false, false
		for _, cond := range crt.Status.Conditions {
			switch cond.Type {
			case cmapi.CertificateConditionReady:
				ready = cond.Status == cmmeta.ConditionTrue
			case cmapi.CertificateConditionIssuing:
				issuing = cond.Status == cmmeta.ConditionTrue
			}
		}
		return ready && !issuing, nil
	})
	if err != nil {
		t.Fatalf("waiting for Certificate %s/%s to be Ready: %v; conditions %s", ns, name, err, last)
	}
}

func waitSecretRenewed(ctx context.Context, t *testing.T, c client.Client, ns, name string, old *x509.Certificate) *corev1.Secret {
	t.Helper()
	var s *corev1.Secret
	poll(ctx, t, fmt.Sprintf("a new certificate in Secret %s/%s", ns, name), func(ctx context.Context) (bool, error) {
		s = &corev1.Secret{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, s); err != nil {
			return false, err
		}
		b, _ := pem.Decode(s.Data[corev1.TLSCertKey])
		if b == nil {
			return false, nil
		}
		crt, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return false, err
		}
		return crt.SerialNumber.Cmp(old.SerialNumber) != 0, nil
	})
	return s
}

func getSecret(ctx context.Context, t *testing.T, c client.Client, ns, name string) *corev1.Secret {
	t.Helper()
	s := &corev1.Secret{}
	must(t, c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, s))
	return s
}

// checkLeaf checks a certificate Secret as a relay would use it: tls.crt,
// tls.key and ca.crt present, the key pair matches, and the certificate is
// valid for dnsName for TLS servers, chaining to roots.
func checkLeaf(t *testing.T, s *corev1.Secret, roots *x509.CertPool, dnsName string) *x509.Certificate {
	t.Helper()
	for _, k := range []string{corev1.TLSCertKey, corev1.TLSPrivateKeyKey, cmmeta.TLSCAKey} {
		if len(s.Data[k]) == 0 {
			t.Fatalf("Secret %s/%s has no %s (keys: %v)", s.Namespace, s.Name, k, keys(s.Data))
		}
	}
	if _, err := tls.X509KeyPair(s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey]); err != nil {
		t.Fatalf("Secret %s/%s: tls.crt and tls.key do not match: %v", s.Namespace, s.Name, err)
	}
	leaf := parseCert(t, s.Data[corev1.TLSCertKey])
	caInSecret := parseCert(t, s.Data[cmmeta.TLSCAKey])
	if _, err := leaf.Verify(x509.VerifyOptions{
		DNSName:   dnsName,
		Roots:     roots,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		t.Fatalf("Secret %s/%s: certificate does not verify for %s: %v", s.Namespace, s.Name, dnsName, err)
	}
	// ca.crt is what in-cluster clients are told to trust: it must be the
	// root the certificate chains to.
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: dnsName, Roots: poolOf(caInSecret)}); err != nil {
		t.Fatalf("Secret %s/%s: certificate does not chain to the Secret's own ca.crt: %v", s.Namespace, s.Name, err)
	}
	return leaf
}

func parseCert(t *testing.T, data []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		t.Fatalf("not a PEM certificate: %.60q", data)
	}
	crt, err := x509.ParseCertificate(b.Bytes)
	must(t, err)
	return crt
}

func poolOf(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// shorten cuts each line to at most n bytes.
func shorten(lines []string, n int) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		if len(l) > n {
			l = l[:n] + "..."
		}
		out[i] = l
	}
	return out
}

func keys(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
