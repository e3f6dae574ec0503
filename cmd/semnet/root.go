package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/semnet/semnet/root"
	"github.com/semnet/semnet/root/store/mongo"
	"github.com/semnet/semnet/shared/addrplan"
)

// rootFlags are the flags of `semnet root`; `semnet up` reuses them.
type rootFlags struct {
	listen, dataDir, mongoURI, mongoDB, token, planFile string
	readTokens, peers                                   []string
	insecure, noMigrate                                 bool
	quarantine, storeWait, changeRetention              time.Duration
	tls                                                 tlsServerFlags // root's only, not up's
	peerTLS                                             tlsClientFlags // root's only, not up's
	rate                                                rateLimitFlags
	log                                                 logFlags
}

// register adds the flags; rateDefault is --rate-limit's default (0: off).
func (f *rootFlags) register(fs *pflag.FlagSet, listenDefault string, rateDefault float64) {
	fs.StringVar(&f.listen, "listen", listenDefault, "address the REST API listens on")
	fs.StringVar(&f.dataDir, "data-dir", "semnet-data", "directory of the embedded store (used unless --mongo-uri is set)")
	fs.StringVar(&f.mongoURI, "mongo-uri", "", "MongoDB URI; when set, MongoDB is the store instead of the embedded one")
	fs.StringVar(&f.mongoDB, "mongo-db", "semnet", "MongoDB database name")
	fs.DurationVar(&f.storeWait, "store-wait", time.Minute, "how long to keep retrying at start while MongoDB is unreachable or too busy, before giving up (0: try once)")
	fs.DurationVar(&f.changeRetention, "change-retention", root.DefaultChangeRetention, "how long the change log keeps a change for clusters to catch up; a cluster further behind re-reads everything (negative: keep every change)")
	fs.BoolVar(&f.noMigrate, "no-migrate", false, "do not apply MongoDB schema migrations at start (run `semnet root migrate` instead)")
	fs.StringVar(&f.token, "token", "", "bearer token every /api request must carry (Authorization: Bearer TOKEN)")
	fs.StringSliceVar(&f.peers, "peer", nil, "base URL of another root process on the same MongoDB, e.g. http://root-b:10099 (repeat or comma-separate): this one tells them of each change it logs, so clusters following any of them hear of it at once instead of at the next 50 ms store watch; peers must accept this one's --token")
	fs.StringSliceVar(&f.readTokens, "read-token", nil, "bearer token that may only read (GET) the API, e.g. for the status page or monitoring (repeat or comma-separate for several)")
	fs.BoolVar(&f.insecure, "insecure", false, "serve /api without a token; allowed only on a loopback listen address")
	fs.StringVar(&f.planFile, "address-plan", "", "JSON file overriding address plan fields (defaults: ADDRESSING.md)")
	fs.DurationVar(&f.quarantine, "quarantine", addrplan.Default().Quarantine, "how long a released address waits before reuse")
	f.rate.register(fs, rateDefault)
	f.log.register(fs)
}

func (f *rootFlags) config() (root.Config, error) {
	plan := addrplan.Default()
	if f.planFile != "" {
		var err error
		if plan, err = addrplan.Load(f.planFile); err != nil {
			return root.Config{}, err
		}
	}
	plan.Quarantine = f.quarantine
	log, err := f.log.logger(os.Stderr)
	if err != nil {
		return root.Config{}, err
	}
	c := root.Config{Listen: f.listen, DataDir: f.dataDir, MongoURI: f.mongoURI, MongoDB: f.mongoDB,
		NoMigrate: f.noMigrate, StoreWait: f.storeWait, ChangeRetention: f.changeRetention, Insecure: f.insecure, Plan: plan, Logger: log,
		TLS: f.tls.files, RateLimit: f.rate.limit, RateBurst: f.rate.burst, Peers: f.peers, PeerTLS: f.peerTLS.files}
	if f.token != "" {
		c.Tokens = []string{f.token}
	}
	c.ReadTokens = f.readTokens
	return c, nil
}

func newRootServiceCommand() *cobra.Command {
	var (
		f rootFlags
		c root.Config
	)
	cmd := &cobra.Command{
		Use:   "root",
		Short: "Run the root service: address allocation, instance records, REST API",
		Long: `The root service allocates Service IPs, Instance IPs and worker subnets, stores
geo-tagged instance records (embedded store by default, MongoDB with --mongo-uri),
serves the REST API (/api/v1 and the reference /api/net) and streams changes to clusters.

With --tls-cert and --tls-key it serves HTTPS only (TLS 1.2 or later), re-reading the
certificate when its files change; --tls-client-ca also requires a client certificate
signed by that CA of every client. Each client (token scope + source address) may make
--rate-limit requests/s of /api in bursts of --rate-burst; beyond, root answers 429 with
Retry-After. /healthz, /readyz and /metrics are never limited.

Several root processes may share one MongoDB (--mongo-uri, same --mongo-db and --token);
give each the others' URLs with --peer, so that a cluster following one of them hears at
once of a change made through another; --peer-ca verifies https peers, and --peer-cert
with --peer-key is the client certificate for peers that require one (--tls-client-ca).

It answers /readyz with 200 once it serves.`,
		Args:    cobra.NoArgs,
		PreRunE: checkConfig(&c, f.config),
		RunE: func(cmd *cobra.Command, _ []string) error {
			srv, err := root.Start(cmd.Context(), c)
			if err != nil {
				return err
			}
			<-cmd.Context().Done()
			return srv.Close()
		},
	}
	f.register(cmd.Flags(), ":10099", defaultRateLimit)
	f.tls.register(cmd.Flags()) // not up's: it serves plain HTTP on loopback
	f.peerTLS.register(cmd.Flags(), "peer-", "a --peer root")
	bindEnv(cmd)
	cmd.AddCommand(newMigrateCommand())
	return cmd
}

func newMigrateCommand() *cobra.Command {
	var uri, db string
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply the MongoDB schema migrations (collections and unique indexes) and exit",
		Long: `migrate brings the MongoDB database --mongo-db at --mongo-uri to the current schema
(collections, unique indexes on every address) and prints its version. Root applies the
migrations itself at start unless --no-migrate; this is for deployments where the
schema is changed by an operator first. The embedded store needs none.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if uri == "" {
				return fmt.Errorf("--mongo-uri is required: migrations apply to MongoDB only (the embedded store needs none)")
			}
			v, err := mongo.Migrate(cmd.Context(), uri, db)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "schema at version %d\n", v)
			return nil
		},
	}
	cmd.Flags().StringVar(&uri, "mongo-uri", "", "MongoDB URI")
	cmd.Flags().StringVar(&db, "mongo-db", "semnet", "MongoDB database name")
	bindEnv(cmd)
	return cmd
}
