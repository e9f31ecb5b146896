package install

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/controllers/render"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
	"github.com/mailfleet/mailfleet/internal/loopback"
	"github.com/mailfleet/mailfleet/internal/natstest"
	"github.com/mailfleet/mailfleet/internal/syncbuffer"
)

// TestNATSAuth runs a real nats-server (the module the relay uses) from the
// basic NATS' rendered nats.conf and the environment the kubelet would give
// the container, with the chart's generated credentials and with
// credentials of an existingSecret that nats-server's configuration parser
// would misread unquoted (digits, "true", "#", "$", spaces). A client
// without them, or with a wrong password, is refused; one with them logs in
// and gets a JetStream acknowledgement.
func TestNATSAuth(t *testing.T) {
	generated := splitYAML(t, renderChart(t, "mailfleet-system", "--set", "nats.enabled=true", "--set", "nats.auth.enabled=true"))
	secret := secretData(t, byName(t, generated, "Secret", "mailfleet-nats-auth"))
	if !regexp.MustCompile(`^[A-Za-z0-9]{32}$`).MatchString(secret["password"]) || secret["username"] == "" {
		t.Fatalf("generated credentials: username %q, password of %d characters; want a user and 32 letters and digits", secret["username"], len(secret["password"]))
	}
	cases := []struct {
		name    string
		render  []*unstructured.Unstructured
		secrets map[string]map[string]string
	}{
		{"generated", generated, map[string]map[string]string{"mailfleet-nats-auth": secret}},
	}
	for _, creds := range []map[string]string{
		{"username": "relay", "password": "0123456789"},
		{"username": "true", "password": "true"},
		{"username": "mail fleet", "password": `p#ss w0rd$HOME {a: b} [1, 2]; ' =`},
	} {
		cases = append(cases, struct {
			name    string
			render  []*unstructured.Unstructured
			secrets map[string]map[string]string
		}{
			"existingSecret " + creds["password"],
			splitYAML(t, renderChart(t, "mailfleet-system", "--set", "nats.enabled=true", "--set", "nats.auth.existingSecret=my-nats")),
			map[string]map[string]string{"my-nats": creds},
		})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var want map[string]string
			for _, s := range tc.secrets {
				want = s
			}
			conf := natsConf(t, tc.render)
			path := filepath.Join(t.TempDir(), "nats.conf")
			if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
				t.Fatal(err)
			}
			sts := &appsv1.StatefulSet{}
			fromUnstructured(t, find(t, tc.render, "StatefulSet", 1)[0], sts)
			for _, kv := range kubeletEnv(t, sts.Spec.Template.Spec.Containers[0], tc.secrets, "mailfleet-nats-0") {
				t.Setenv(kv[0], kv[1])
			}
			opts, err := natsserver.ProcessConfigFile(path)
			if err != nil {
				t.Fatalf("nats-server refuses the config: %v\n%s", err, conf)
			}
			if opts.Username != want["username"] || opts.Password != want["password"] {
				t.Fatalf("nats-server read user %q password %q, want %q %q", opts.Username, opts.Password, want["username"], want["password"])
			}
			// One node on loopback: the same server options, less the
			// cluster (whose peers are not here) and the pod's paths.
			opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", natsserver.RANDOM_PORT, 0
			opts.Cluster, opts.Routes = natsserver.ClusterOpts{}, nil
			opts.StoreDir, opts.PidFile, opts.NoSigs, opts.NoLog = t.TempDir(), "", true, true
			srv := natstest.Run(t, opts, 10*time.Second)
			for what, opt := range map[string]nats.Option{
				"no credentials": func(*nats.Options) error { return nil },
				"wrong password": nats.UserInfo(want["username"], want["password"]+"x"),
			} {
				if nc, err := nats.Connect(srv.ClientURL(), opt, nats.NoReconnect()); err == nil {
					nc.Close()
					t.Errorf("%s: connected, want the server to refuse", what)
				} else if !errors.Is(err, nats.ErrAuthorization) {
					t.Errorf("%s: %v, want an authorization violation", what, err)
				}
			}
			nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo(want["username"], want["password"]), nats.NoReconnect())
			if err != nil {
				t.Fatalf("with the Secret's credentials: %v", err)
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "AUTH_TEST", Subjects: []string{"auth.test"}}); err != nil {
				t.Fatalf("create a stream as the Secret's user: %v", err)
			}
			if _, err := js.Publish(ctx, "auth.test", []byte("queued")); err != nil {
				t.Fatalf("publish as the Secret's user: %v", err)
			}
		})
	}
}

// TestRedisAuth runs the basic Redis container's own command (with
// redis-server moved to a loopback port and a temporary directory) with the
// environment the kubelet would give it: with redis.auth, a client without
// the password gets NOAUTH and one with it PONG, also for an existingSecret
// password with spaces, quotes and "$"; without, anyone gets PONG.
func TestRedisAuth(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server is not installed: run hack/install-test-deps.sh (make test does)")
	}
	generated := splitYAML(t, renderChart(t, "mailfleet-system", "--set", "redis.enabled=true", "--set", "redis.auth.enabled=true"))
	secret := secretData(t, byName(t, generated, "Secret", "mailfleet-redis-auth"))
	if !regexp.MustCompile(`^[A-Za-z0-9]{32}$`).MatchString(secret["password"]) {
		t.Fatalf("generated password of %d characters; want 32 letters and digits", len(secret["password"]))
	}
	cases := []struct {
		name     string
		render   []*unstructured.Unstructured
		secrets  map[string]map[string]string
		password string
	}{
		{"generated", generated, map[string]map[string]string{"mailfleet-redis-auth": secret}, secret["password"]},
		{"existingSecret", splitYAML(t, renderChart(t, "mailfleet-system", "--set", "redis.enabled=true", "--set", "redis.auth.existingSecret=my-redis")),
			map[string]map[string]string{"my-redis": {"password": `it's a "pass" $HOME word`}}, `it's a "pass" $HOME word`},
		{"no auth", splitYAML(t, renderChart(t, "mailfleet-system", "--set", "redis.enabled=true")), nil, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.password == "" {
				find(t, tc.render, "Secret", 0)
			}
			var dep *appsv1.Deployment
			for _, o := range find(t, tc.render, "Deployment", -1) {
				if o.GetLabels()["app.kubernetes.io/component"] == "redis" {
					dep = &appsv1.Deployment{}
					fromUnstructured(t, o, dep)
				}
			}
			if dep == nil {
				t.Fatal("no Redis Deployment rendered")
			}
			c := dep.Spec.Template.Spec.Containers[0]
			if len(c.Command) != 3 || c.Command[0] != "sh" || c.Command[1] != "-c" {
				t.Fatalf("Redis command %q, want sh -c <script>", c.Command)
			}
			script := c.Command[2]
			addr := loopback.FreeAddr(t)
			_, port, _ := strings.Cut(addr, ":")
			for old, repl := range map[string]string{
				"exec redis-server ": "exec redis-server --port " + port + " --bind 127.0.0.1 ",
				"--dir /data":        "--dir " + t.TempDir(),
			} {
				if strings.Count(script, old) != 1 {
					t.Fatalf("the Redis script no longer has %q once; update this test:\n%s", old, script)
				}
				script = strings.Replace(script, old, repl, 1)
			}
			cmd := exec.Command("sh", "-c", script)
			cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
			for _, kv := range kubeletEnv(t, c, tc.secrets, dep.Name) {
				cmd.Env = append(cmd.Env, kv[0]+"="+kv[1])
			}
			out := &syncbuffer.Buffer{}
			cmd.Stdout, cmd.Stderr = out, out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				cmd.Process.Kill() // exec: the shell is redis-server now
				cmd.Wait()
				if t.Failed() {
					t.Logf("redis-server:\n%s", out)
				}
			})
			ctx := context.Background()
			anonymous := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
			defer anonymous.Close()
			var pingErr error
			envtestkit.Eventually(t, 10*time.Second, func() error {
				pingErr = anonymous.Ping(ctx).Err()
				if pingErr != nil && !strings.Contains(pingErr.Error(), "NOAUTH") {
					return pingErr // not up yet
				}
				return nil
			})
			if tc.password == "" {
				if pingErr != nil {
					t.Errorf("without redis.auth: PING = %v, want PONG", pingErr)
				}
				return
			}
			if pingErr == nil || !strings.Contains(pingErr.Error(), "NOAUTH") {
				t.Errorf("PING without the password: %v, want NOAUTH", pingErr)
			}
			authed := redis.NewClient(&redis.Options{Addr: addr, Password: tc.password, MaxRetries: -1})
			defer authed.Close()
			if err := authed.Ping(ctx).Err(); err != nil {
				t.Errorf("PING with the Secret's password: %v", err)
			}
		})
	}
}

// TestEngineAuthSecretsFitRelays: an SmtpRelay naming the chart's generated
// Secrets (spec.queue.nats.authSecretRef, spec.rateLimit.redis
// .passwordSecretRef, as the release notes print) gets pods that mount keys
// those Secrets have: the operator's rendering of the sample relay is the
// other end of the credentials.
func TestEngineAuthSecretsFitRelays(t *testing.T) {
	objs := splitYAML(t, renderChart(t, "mailfleet-system", "--set", "nats.enabled=true", "--set", "nats.auth.enabled=true",
		"--set", "redis.enabled=true", "--set", "redis.auth.enabled=true"))
	secrets := map[string]map[string]string{}
	for _, name := range []string{"mailfleet-nats-auth", "mailfleet-redis-auth"} {
		secrets[name] = secretData(t, byName(t, objs, "Secret", name))
	}
	relay := sampleRelay(t, "mail")
	relay.Spec.Queue.NATS.AuthSecretRef = &v1.LocalSecretReference{Name: "mailfleet-nats-auth"}
	if relay.Spec.RateLimit == nil {
		t.Fatal("the sample relay sets no rateLimit")
	}
	relay.Spec.RateLimit.Redis.PasswordSecretRef = &v1.SecretKeySelector{Name: "mailfleet-redis-auth", Key: "password"}
	rendered, err := render.Relay(relay, render.Options{Image: "mailfleet:test"})
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, vol := range rendered.Deployment.Spec.Template.Spec.Volumes {
		if vol.Secret == nil || secrets[vol.Secret.SecretName] == nil {
			continue
		}
		used[vol.Secret.SecretName] = true
		for _, item := range vol.Secret.Items {
			if _, ok := secrets[vol.Secret.SecretName][item.Key]; !ok {
				t.Errorf("relay pods mount key %q of Secret %s, which the chart does not write", item.Key, vol.Secret.SecretName)
			}
		}
	}
	for name := range secrets {
		if !used[name] {
			t.Errorf("relay pods do not mount Secret %s", name)
		}
	}
}

// TestEngineAuthSecretKept installs the basic engines with generated
// credentials for real (helm install, with lookup against the API server):
// the copy in a relay namespace holds what the release namespace's Secret
// does, an upgrade keeps the password, uninstall keeps the original and
// removes the copy, and installing again serves the same password to both;
// the release notes name the Secrets for SmtpRelay. The release has no
// CRDs or cluster roles, so it leaves TestChartInstall's alone.
func TestEngineAuthSecretKept(t *testing.T) {
	ctx := context.Background()
	ns := env.CreateNamespace(t, "engines", restricted)
	relays := env.CreateNamespace(t, "engines-relays", nil)
	args := []string{"mailfleet", chartDir, "--namespace", ns,
		"--set", "crds.enabled=false", "--set", "rbac.create=false",
		"--set", "nats.enabled=true", "--set", "nats.auth.enabled=true", "--set", "nats.auth.copyToNamespaces={" + relays + "}",
		"--set", "redis.enabled=true", "--set", "redis.auth.enabled=true", "--set", "redis.auth.copyToNamespaces={" + relays + "}"}
	notes, err := helm(append([]string{"install"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	installed := true
	t.Cleanup(func() {
		if installed {
			helm("uninstall", "mailfleet", "--namespace", ns)
		}
		for _, name := range []string{"mailfleet-nats-auth", "mailfleet-redis-auth"} {
			env.Client.Delete(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})
		}
	})
	for _, want := range []string{"authSecretRef: {name: mailfleet-nats-auth}", "passwordSecretRef: {name: mailfleet-redis-auth, key: password}"} {
		if !strings.Contains(string(notes), want) {
			t.Errorf("release notes lack %q:\n%s", want, notes)
		}
	}
	read := func(namespace, name string) map[string]string {
		t.Helper()
		s := &corev1.Secret{}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, s); err != nil {
			t.Fatalf("Secret %s/%s: %v", namespace, name, err)
		}
		out := map[string]string{}
		for k, v := range s.Data {
			out[k] = string(v)
		}
		return out
	}
	first := map[string]map[string]string{}
	for _, name := range []string{"mailfleet-nats-auth", "mailfleet-redis-auth"} {
		first[name] = read(ns, name)
		if len(first[name]["password"]) != 32 {
			t.Errorf("%s: password of %d characters, want 32", name, len(first[name]["password"]))
		}
		if got := read(relays, name); fmt.Sprint(got) != fmt.Sprint(first[name]) {
			t.Errorf("the copy of %s in %s differs from the release namespace's", name, relays)
		}
	}
	if out, err := helm("upgrade", "mailfleet", chartDir, "--namespace", ns, "--reuse-values", "--set", "logLevel=debug"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for name, want := range first {
		if got := read(ns, name); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("helm upgrade changed %s", name)
		}
		if got := read(relays, name); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("helm upgrade changed the copy of %s", name)
		}
	}
	if out, err := helm("uninstall", "mailfleet", "--namespace", ns); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	installed = false
	for name, want := range first {
		if got := read(ns, name); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("after helm uninstall, %s changed", name)
		}
		envtestkit.Eventually(t, installWait, func() error {
			err := env.Client.Get(ctx, client.ObjectKey{Namespace: relays, Name: name}, &corev1.Secret{})
			if apierrors.IsNotFound(err) {
				return nil
			}
			return fmt.Errorf("the copy of %s in %s is still there after helm uninstall (%v)", name, relays, err)
		})
	}
	if out, err := helm(append([]string{"install"}, args...)...); err != nil {
		t.Fatalf("installing again: %v\n%s", err, out)
	}
	installed = true
	for name, want := range first {
		for _, namespace := range []string{ns, relays} {
			if got := read(namespace, name); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("after installing again, %s/%s holds other credentials", namespace, name)
			}
		}
	}
}

// kubeletEnv is the environment the kubelet gives container c of pod
// podName: secretKeyRef values from secrets, metadata.name from the pod,
// and $(VAR) in a value expanded from the variables before it.
func kubeletEnv(t *testing.T, c corev1.Container, secrets map[string]map[string]string, podName string) [][2]string {
	t.Helper()
	var env [][2]string
	defined := map[string]string{}
	ref := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	for _, e := range c.Env {
		var v string
		switch {
		case e.ValueFrom == nil:
			v = ref.ReplaceAllStringFunc(e.Value, func(m string) string {
				if val, ok := defined[m[2:len(m)-1]]; ok {
					return val
				}
				return m
			})
		case e.ValueFrom.SecretKeyRef != nil:
			sel := e.ValueFrom.SecretKeyRef
			val, ok := secrets[sel.Name][sel.Key]
			if !ok {
				t.Fatalf("env %s: Secret %s has no key %s here (have %v)", e.Name, sel.Name, sel.Key, secrets)
			}
			v = val
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
			v = podName
		default:
			t.Fatalf("env %s: %+v is not something this test plays", e.Name, e.ValueFrom)
		}
		defined[e.Name] = v
		env = append(env, [2]string{e.Name, v})
	}
	return env
}

// secretData decodes a rendered Secret's data.
func secretData(t *testing.T, s *unstructured.Unstructured) map[string]string {
	t.Helper()
	data, _, _ := unstructured.NestedStringMap(s.Object, "data")
	out := map[string]string{}
	for k, v := range data {
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			t.Fatalf("Secret %s key %s: %v", s.GetName(), k, err)
		}
		out[k] = string(b)
	}
	return out
}

// natsConf is the rendered nats.conf.
func natsConf(t *testing.T, objs []*unstructured.Unstructured) string {
	t.Helper()
	for _, cm := range find(t, objs, "ConfigMap", -1) {
		if s, ok, _ := unstructured.NestedString(cm.Object, "data", "nats.conf"); ok {
			return s
		}
	}
	t.Fatal("no ConfigMap with nats.conf rendered")
	return ""
}
