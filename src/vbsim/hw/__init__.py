"""The platform: guest RAM, paging, per-VTL SLAT, TLBs, virtual processors, IOMMU and devices."""
