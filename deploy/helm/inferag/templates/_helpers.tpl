{{/* Release-scoped name of the chart's objects. */}}
{{- define "inferag.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "inferag.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "name" "rag"). */}}
{{- define "inferag.selectorLabels" -}}
app.kubernetes.io/name: {{ default .root.Chart.Name .root.Values.nameOverride | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "inferag.secretName" -}}
{{- default (printf "%s-keys" (include "inferag.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The Qdrant chart's own fullname rule, so its Service and key Secret can be found. */}}
{{- define "inferag.qdrantFullname" -}}
{{- $q := .Values.qdrant -}}
{{- if $q.fullnameOverride -}}
{{- $q.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "qdrant" $q.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "inferag.qdrantUrl" -}}
{{- if .Values.qdrant.enabled -}}
{{- printf "http://%s:6333" (include "inferag.qdrantFullname" .) -}}
{{- else -}}
{{- required "externalQdrant.url is required when qdrant.enabled is false" .Values.externalQdrant.url -}}
{{- end -}}
{{- end -}}

{{/* QDRANT_API_KEY from the Qdrant chart's generated Secret, or from externalQdrant.apiKeySecret. */}}
{{- define "inferag.qdrantApiKeyEnv" -}}
{{- if .Values.qdrant.enabled }}
- name: QDRANT_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "inferag.qdrantFullname" . }}-apikey
      key: api-key
{{- else if .Values.externalQdrant.apiKeySecret.name }}
- name: QDRANT_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalQdrant.apiKeySecret.name }}
      key: {{ .Values.externalQdrant.apiKeySecret.key }}
{{- end }}
{{- end -}}

{{/* An env entry reading the client API key: (list $ "INFERAG_GEN_API_KEY"). */}}
{{- define "inferag.apiKeyEnv" -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ include "inferag.secretName" (index . 0) }}
      key: api-key
{{- end -}}

{{/* Plain env entries from a map; empty values are left out so the service default applies. */}}
{{- define "inferag.envMap" -}}
{{- range $name, $value := . }}
{{- if not (eq (toString $value) "") }}
- name: {{ $name }}
  {{- /* YAML numbers arrive as float64: print whole ones as integers, not 2.097152e+07. */}}
  {{- if and (kindIs "float64" $value) (eq $value (float64 (int64 $value))) }}
  value: {{ int64 $value | toString | quote }}
  {{- else }}
  value: {{ toString $value | quote }}
  {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
A Deployment and its Service for one component:
(dict "root" $ "name" "rag" "port" 8002 "module" "services.rag.app" "values" .Values.rag "env" (include ...))
*/}}
{{- define "inferag.component" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $img := index $root.Values.image ($v.image | default "cpu") -}}
{{- $labels := include "inferag.selectorLabels" (dict "root" $root "name" .name) }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "inferag.fullname" $root }}-{{ .name }}
  labels:
    {{- include "inferag.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .name }}
spec:
  {{- if not (and $v.autoscaling $v.autoscaling.enabled) }}
  replicas: {{ $v.replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- $labels | nindent 6 }}
  template:
    metadata:
      labels:
        {{- $labels | nindent 8 }}
      annotations:
        checksum/secret: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
        {{- if $root.Values.metrics.podAnnotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ .port | quote }}
        prometheus.io/path: /metrics
        {{- end }}
    spec:
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ .name }}
          image: "{{ $img.repository }}:{{ $img.tag }}"
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: [{{ if eq ($v.image | default "cpu") "cuda" }}"python3"{{ else }}"python"{{ end }}, "-m", {{ .module | quote }}]
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          ports:
            - name: http
              containerPort: {{ .port }}
          env:
            {{- .env | nindent 12 }}
            {{- with $v.env }}
            {{- include "inferag.envMap" . | nindent 12 }}
            {{- end }}
          startupProbe:
            httpGet: {path: {{ $root.Values.probes.liveness.path }}, port: http}
            periodSeconds: {{ $v.startupProbe.periodSeconds }}
            failureThreshold: {{ $v.startupProbe.failureThreshold }}
          readinessProbe:
            httpGet: {path: {{ $root.Values.probes.readiness.path }}, port: http}
            periodSeconds: {{ $root.Values.probes.readiness.periodSeconds }}
            timeoutSeconds: {{ $root.Values.probes.readiness.timeoutSeconds }}
            failureThreshold: {{ $root.Values.probes.readiness.failureThreshold }}
          livenessProbe:
            httpGet: {path: {{ $root.Values.probes.liveness.path }}, port: http}
            periodSeconds: {{ $root.Values.probes.liveness.periodSeconds }}
            timeoutSeconds: {{ $root.Values.probes.liveness.timeoutSeconds }}
            failureThreshold: {{ $root.Values.probes.liveness.failureThreshold }}
          resources:
            {{- $res := deepCopy ($v.resources | default dict) }}
            {{- if and $v.gpus (gt (int $v.gpus) 0) }}
            {{- $limits := merge (dict "nvidia.com/gpu" (int $v.gpus)) ($res.limits | default dict) }}
            {{- $_ := set $res "limits" $limits }}
            {{- end }}
            {{- toYaml $res | nindent 12 }}
          volumeMounts:
            - {name: data, mountPath: /data}
            - {name: tmp, mountPath: /tmp}
            {{- if .shm }}
            - {name: shm, mountPath: /dev/shm}
            {{- end }}
      volumes:
        {{- if and .pvc $v.persistence.enabled }}
        - name: data
          persistentVolumeClaim:
            claimName: {{ include "inferag.fullname" $root }}-{{ .name }}-data
        {{- else }}
        - name: data
          emptyDir: {}
        {{- end }}
        - name: tmp
          emptyDir: {}
        {{- if .shm }}
        - name: shm
          emptyDir: {medium: Memory, sizeLimit: {{ .shm }}}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "inferag.fullname" $root }}-{{ .name }}
  labels:
    {{- include "inferag.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .name }}
spec:
  type: {{ .serviceType | default "ClusterIP" }}
  selector:
    {{- $labels | nindent 4 }}
  ports:
    - name: http
      port: {{ .servicePort | default .port }}
      targetPort: http
{{- end -}}
