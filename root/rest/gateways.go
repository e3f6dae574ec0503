package rest

import (
	"net/http"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/shared/httpapi"
)

// registerGateway answers PUT /gateways/{id}: 201 for a new gateway, 200 for a
// re-registration (which keeps its Instance IPs).
func (s *server) registerGateway(w http.ResponseWriter, r *http.Request) error {
	var req api.GatewayRequest
	if err := httpapi.DecodeJSON(w, r, &req); err != nil {
		return err
	}
	g, created, err := s.reg.RegisterGateway(r.Context(), param(r, "id"), req)
	if err != nil {
		return err
	}
	status := http.StatusOK
	if created {
		w.Header().Set("Location", "/api/v1/gateways/"+g.ID)
		status = http.StatusCreated
	}
	httpapi.WriteJSON(w, status, toGateway(g))
	return nil
}

func (s *server) listGateways(w http.ResponseWriter, r *http.Request) error {
	gs, err := s.reg.Gateways(r.Context())
	if err != nil {
		return err
	}
	out := make([]api.Gateway, len(gs))
	for i, g := range gs {
		out[i] = toGateway(g)
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
	return nil
}

func (s *server) getGateway(w http.ResponseWriter, r *http.Request) error {
	g, err := s.reg.GatewayByID(r.Context(), param(r, "id"))
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, toGateway(g))
	return nil
}

func (s *server) deleteGateway(w http.ResponseWriter, r *http.Request) error {
	force, err := queryForce(r)
	if err != nil {
		return err
	}
	if err := s.reg.DeleteGateway(r.Context(), param(r, "id"), force); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *server) createExposure(w http.ResponseWriter, r *http.Request) error {
	var req api.ExposureRequest
	if err := httpapi.DecodeJSON(w, r, &req); err != nil {
		return err
	}
	e, err := s.reg.CreateExposure(r.Context(), param(r, "service"), req)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/api/v1/services/"+e.ServiceID+"/exposures/"+e.ID)
	httpapi.WriteJSON(w, http.StatusCreated, toExposure(e))
	return nil
}

func (s *server) listServiceExposures(w http.ResponseWriter, r *http.Request) error {
	es, rev, err := s.reg.ListExposures(r.Context(), param(r, "service"))
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, toExposureList(es, rev))
	return nil
}

func (s *server) getExposure(w http.ResponseWriter, r *http.Request) error {
	e, err := s.reg.Exposure(r.Context(), param(r, "service"), param(r, "id"))
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, toExposure(e))
	return nil
}

func (s *server) deleteExposure(w http.ResponseWriter, r *http.Request) error {
	if err := s.reg.DeleteExposure(r.Context(), param(r, "service"), param(r, "id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// listExposures answers GET /exposures[?gateway=ID]: every exposure, or those the
// gateway serves (its own and those for every gateway), which is how a cluster
// configures its gateway nodes.
func (s *server) listExposures(w http.ResponseWriter, r *http.Request) error {
	list := s.reg.ListExposures
	key := "" // every service
	if gw := r.URL.Query().Get("gateway"); gw != "" {
		list, key = s.reg.ExposuresForGateway, gw
	}
	es, rev, err := list(r.Context(), key)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, toExposureList(es, rev))
	return nil
}
