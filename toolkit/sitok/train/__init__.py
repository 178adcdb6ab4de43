"""sitok.train"""
