package registry

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/root/store"
)

// RegisterCluster creates or updates a cluster. reference marks clusters registered
// through the reference API, which get the reference's push notifications.
func (r *Registry) RegisterCluster(ctx context.Context, req api.ClusterRequest, reference bool) (store.Cluster, error) {
	if err := validID("id", req.ID); err != nil {
		return store.Cluster{}, err
	}
	if req.Address == "" || strings.ContainsAny(req.Address, "/ ?#@") {
		return store.Cluster{}, invalidf("address %q must be a host name or IP address", req.Address)
	}
	if req.Port < 1 || req.Port > 65535 {
		return store.Cluster{}, invalidf("port %d must be between 1 and 65535", req.Port)
	}
	if err := req.Location.Validate(); err != nil {
		return store.Cluster{}, invalidf("location: %v", err)
	}
	if req.RadiusKM < 0 {
		return store.Cluster{}, invalidf("radius_km %v must not be negative", req.RadiusKM)
	}
	if req.Name == "" {
		req.Name = req.ID
	}
	now := r.now().UTC()
	c := store.Cluster{ID: req.ID, Name: req.Name, Address: req.Address, Port: req.Port, Location: req.Location,
		RadiusKM: req.RadiusKM, Reference: reference, Status: "registered", LastSeen: now, CreatedAt: now}
	if old, err := r.store.GetCluster(ctx, req.ID); err == nil {
		c.CreatedAt = old.CreatedAt
		c.Reference = old.Reference || reference
	}
	if err := r.store.PutCluster(ctx, c); err != nil {
		return store.Cluster{}, fmt.Errorf("register cluster %s: %w", req.ID, err)
	}
	r.log.Info("cluster registered", "cluster", c.ID, "address", c.Address, "port", c.Port, "reference", c.Reference)
	return c, nil
}

// Heartbeat records that a cluster is alive and its status.
func (r *Registry) Heartbeat(ctx context.Context, id, status string) (store.Cluster, error) {
	c, err := r.Cluster(ctx, id)
	if err != nil {
		return store.Cluster{}, err
	}
	if len(status) > 64 {
		return store.Cluster{}, invalidf("status must be at most 64 characters")
	}
	if status == "" {
		status = "ok"
	}
	c.Status, c.LastSeen = status, r.now().UTC()
	if err := r.store.PutCluster(ctx, c); err != nil {
		return store.Cluster{}, fmt.Errorf("cluster %s heartbeat: %w", id, err)
	}
	return c, nil
}

// Cluster returns one cluster.
func (r *Registry) Cluster(ctx context.Context, id string) (store.Cluster, error) {
	c, err := r.store.GetCluster(ctx, id)
	if err != nil {
		return store.Cluster{}, fmt.Errorf("cluster %s: %w", id, err)
	}
	return c, nil
}

// clusterTTL is how long a read of a cluster's registration stands for knownCluster:
// every change-stream poll, interest and placement checks that its cluster is
// registered, many times a second per cluster, and clusters come and go rarely. A
// cluster deleted through another root process may pass for registered here that long.
const clusterTTL = 5 * time.Second

// knownCluster checks that a cluster is registered, reading the store at most once per
// clusterTTL for one that is.
func (r *Registry) knownCluster(ctx context.Context, id string) error {
	if at, ok := r.clustersSeen.Load(id); ok && r.now().Sub(at.(time.Time)) < clusterTTL {
		return nil
	}
	if _, err := r.Cluster(ctx, id); err != nil {
		return err
	}
	r.clustersSeen.Store(id, r.now())
	return nil
}

// Clusters lists clusters.
func (r *Registry) Clusters(ctx context.Context) ([]store.Cluster, error) {
	return r.store.ListClusters(ctx)
}

// DeleteCluster removes a cluster and its interests.
func (r *Registry) DeleteCluster(ctx context.Context, id string) error {
	if _, err := r.Cluster(ctx, id); err != nil {
		return err
	}
	r.clustersSeen.Delete(id)
	if err := r.store.DeleteCluster(ctx, id); err != nil {
		return fmt.Errorf("delete cluster %s: %w", id, err)
	}
	r.clustersSeen.Delete(id) // a check racing the deletion may have stored it again
	r.log.Info("cluster deleted", "cluster", id)
	return nil
}

// AddInterest registers that a cluster wants the changes of the service named by key.
func (r *Registry) AddInterest(ctx context.Context, clusterID, key string) (store.Service, error) {
	if err := r.knownCluster(ctx, clusterID); err != nil {
		return store.Service{}, err
	}
	s, err := r.Service(ctx, key)
	if err != nil {
		return store.Service{}, err
	}
	if err := r.store.AddInterest(ctx, clusterID, s.ID); err != nil {
		return store.Service{}, fmt.Errorf("cluster %s interest in %s: %w", clusterID, s.JobName(), err)
	}
	return s, nil
}

// RemoveInterest drops a cluster's interest in a service.
func (r *Registry) RemoveInterest(ctx context.Context, clusterID, key string) error {
	s, err := r.Service(ctx, key)
	if err != nil {
		return err
	}
	if err := r.store.RemoveInterest(ctx, clusterID, s.ID); err != nil {
		return fmt.Errorf("cluster %s interest in %s: %w", clusterID, s.JobName(), err)
	}
	return nil
}

// InterestedClusters lists the clusters interested in a service.
func (r *Registry) InterestedClusters(ctx context.Context, serviceID string) ([]store.Cluster, error) {
	ids, err := r.store.InterestedClusters(ctx, serviceID)
	if err != nil {
		return nil, fmt.Errorf("interested clusters of %s: %w", serviceID, err)
	}
	out := make([]store.Cluster, 0, len(ids))
	for _, id := range ids {
		c, err := r.store.GetCluster(ctx, id)
		if err != nil {
			continue // deleted meanwhile
		}
		out = append(out, c)
	}
	return out, nil
}

// Interests lists the IDs of the services a cluster is interested in.
func (r *Registry) Interests(ctx context.Context, clusterID string) ([]string, error) {
	ids, err := r.store.Interests(ctx, clusterID)
	if err != nil {
		return nil, fmt.Errorf("interests of cluster %s: %w", clusterID, err)
	}
	return ids, nil
}
