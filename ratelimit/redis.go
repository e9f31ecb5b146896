package ratelimit

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// RedisOptions say how to reach the shared counters.
type RedisOptions struct {
	// Address is host:port.
	Address  string
	Username string
	Password string
	// TLS, when set, encrypts the connection.
	TLS *tls.Config
	// PoolSize caps the connections; zero picks one for the machine.
	PoolSize int
	// Timeout bounds dialing, socket reads and writes, and waiting for a
	// pooled connection. It is a backstop behind each decision's deadline
	// and must not undercut it; zero means five default deadlines (250 ms).
	Timeout time.Duration
}

// SocketTimeout is the RedisOptions.Timeout for a decision deadline: five
// of them, so the socket backstop never fires before the deadline does.
func SocketTimeout(deadline time.Duration) time.Duration {
	return 5 * deadline
}

// NewRedisClient returns a client tuned for a decision deadline of tens of
// milliseconds rather than for throughput at any cost:
//
//   - no retries: a retry would run past the deadline anyway, and a retried
//     script could count a call twice if the first attempt did reach Redis;
//   - the caller's context bounds every command (ContextTimeoutEnabled), and
//     the socket timeouts (RedisOptions.Timeout) are a backstop behind it;
//   - one dial attempt with a short timeout, so an unreachable Redis fails
//     fast instead of waiting through go-redis's default five dial retries;
//   - a pool large enough that concurrent decisions rarely queue for a
//     connection, with a few kept warm so the first decisions after start do
//     not pay for a dial;
//   - no CLIENT SETINFO or maintenance-notification handshake: each is one
//     more round trip per new connection, which counts most while Redis is
//     recovering and connections are being re-made.
func NewRedisClient(o RedisOptions) *redis.Client {
	pool := o.PoolSize
	if pool <= 0 {
		pool = max(64, 16*runtime.GOMAXPROCS(0))
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = SocketTimeout(DefaultDeadline)
	}
	return redis.NewClient(&redis.Options{
		Addr:                     o.Address,
		Username:                 o.Username,
		Password:                 o.Password,
		TLSConfig:                o.TLS,
		MaxRetries:               -1,
		DialTimeout:              timeout,
		DialerRetries:            1,
		ReadTimeout:              timeout,
		WriteTimeout:             timeout,
		ContextTimeoutEnabled:    true,
		PoolSize:                 pool,
		PoolTimeout:              timeout,
		MinIdleConns:             4,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
}

// LogRedisClientTo sends go-redis's own log lines to log at debug level.
// go-redis has one logger per process and writes a line for every failed
// dial, so during an outage it would print one per attempt in its own
// format; the sidecar reports the outage once itself, at warning level.
func LogRedisClientTo(log *slog.Logger) {
	redis.SetLogger(redisLogger{log: log})
}

type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, fmt.Sprintf(format, v...), "component", "go-redis")
}
